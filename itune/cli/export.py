"""itune-export: a run as a standard transformers model directory (conf/export.yaml → run_export)."""

import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.errors import run_command


@hydra.main(config_path="pkg://itune.conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from itune.inference.export import run_export  # lazily: --help and --cfg need no torch

    run_command("export", run_export, cfg)


if __name__ == "__main__":
    main()
