"""itune-eval: compose conf/eval.yaml with command-line overrides and run run_eval(cfg)."""

import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.errors import run_command


@hydra.main(config_path="pkg://itune.conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from itune.eval.evaluate import run_eval  # lazily: --help and --cfg need no torch

    run_command("eval", run_eval, cfg)


if __name__ == "__main__":
    main()
