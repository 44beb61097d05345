"""itune's Hydra configs (shipped as `itune.conf`). Importing it registers the structured-config schemas
and the `package_file` resolver used by shared preset packages."""

from omegaconf import OmegaConf

from itune.config_schema import register_schemas
from itune.presets import package_file

register_schemas()
OmegaConf.register_new_resolver("package_file", package_file, replace=True)
