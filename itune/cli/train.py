"""itune-train: compose conf/train.yaml with command-line overrides and run one job (itune.sweep.job).

`itune-train resume=<run dir>` continues an interrupted run with the overrides it was started with
(itune.resume_run); heavy imports happen inside `main`, so `--help` and `--cfg` start fast.
"""

import sys

import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.errors import run_command
from itune.resume_run import resume_argv
from itune.sweep.optuna import register_plugin

register_plugin()  # hydra/sweeper=itune_optuna in editable installs too (Hydra finds it in wheels itself)


@hydra.main(config_path="pkg://itune.conf", config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    import datasets

    from itune.sweep.job import run_train_job

    datasets.disable_progress_bars()  # progress is Lightning's bar; data steps are logged
    return run_command("train", run_train_job, cfg)  # the `optimized_metric` value, for sweepers


def main() -> None:
    sys.argv = [sys.argv[0], *resume_argv(sys.argv[1:])]
    _main()


if __name__ == "__main__":
    main()
