"""itune-export: a run as a standard transformers model directory (conf/export.yaml → run_export)."""

import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.export import run_export


@hydra.main(config_path="pkg://itune.conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_export(cfg)


if __name__ == "__main__":
    main()
