"""lmttm_monai: memory-based networks (LMTTM, TTM) for MONAI, with MONAI bundles that use them."""

from lmttm_monai import data, metrics, networks
from lmttm_monai import inferers, transforms

__version__ = "0.2.0"

__all__ = ["data", "metrics", "networks", "__version__"]
__all__ += ["inferers", "transforms"]
