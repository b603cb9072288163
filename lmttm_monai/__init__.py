"""lmttm_monai: memory-based networks (LMTTM, TTM) for MONAI, with MONAI bundles that use them."""

from lmttm_monai import data, metrics, networks
from lmttm_monai import checkpointing, handlers, inferers, outputs, transforms

# the one place the package version lives: pyproject.toml reads it, bundle metadata pins it (tests check both)
__version__ = "0.8.0"

__all__ = ["data", "metrics", "networks", "__version__"]
__all__ += ["checkpointing", "handlers", "inferers", "outputs", "transforms"]
