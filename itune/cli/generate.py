"""itune-generate: prompts (command line or JSONL) → JSONL answers (conf/generate.yaml → run_generate)."""

import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.errors import run_command


@hydra.main(config_path="pkg://itune.conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from itune.inference.generate import run_generate  # lazily: --help and --cfg need no torch

    run_command("generate", run_generate, cfg)


if __name__ == "__main__":
    main()
