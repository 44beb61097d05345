"""itune's Optuna sweeper for Hydra, installed as `hydra_plugins.itune_optuna_sweeper`."""

from hydra_plugins.itune_optuna_sweeper.sweeper import OptunaSweeper

__all__ = ["OptunaSweeper"]
