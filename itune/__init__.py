"""itune: declarative instruction tuning with Hydra and Lightning."""

from omegaconf import OmegaConf

from itune.resources import resource_path

__version__ = "0.1.0"

# Config interpolations available to every composed config.
OmegaConf.register_new_resolver("itune_resource", resource_path, replace=True)
