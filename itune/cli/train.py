"""itune-train: compose conf/train.yaml with command-line overrides and run one job (itune.sweep.job)."""

import datasets
import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.sweep.job import run_train_job
from itune.sweep.optuna import register_plugin

register_plugin()  # hydra/sweeper=itune_optuna in editable installs too (Hydra finds it in wheels itself)


@hydra.main(config_path="pkg://itune.conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    datasets.disable_progress_bars()  # progress is Lightning's bar; data steps are logged
    return run_train_job(cfg)  # the `optimized_metric` value, for sweepers (None when unset)


if __name__ == "__main__":
    main()
