"""itune-train: compose conf/train.yaml with command-line overrides and run train(cfg)."""

import datasets
import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.train import train


@hydra.main(config_path="pkg://itune.conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    datasets.disable_progress_bars()  # progress is Lightning's bar; data steps are logged
    train(cfg)


if __name__ == "__main__":
    main()
