"""lmttm_monai: memory-based networks (LMTTM, TTM, Memory-Attention, SALSTM) for MONAI, and MONAI bundles that use them.

The library a MONAI user imports: ``networks`` (``blocks``, ``nets``), ``data``, ``transforms``, ``inferers``,
``handlers``, ``apps``; ``utils`` holds what the library and the project's tooling both need. The tooling lives in
``lmttm_monai.bundle`` (the ``lmttm-monai`` command, model-zoo checks, release, shipping a trained model) and
``lmttm_monai.experiments`` (result records and tables, figures, benchmarks); the library never imports them.
"""

from lmttm_monai import data, handlers, inferers, networks, transforms, utils

# the one place the package version lives: pyproject.toml reads it, bundle metadata pins it (tests check both)
__version__ = "0.9.0"

__all__ = ["data", "handlers", "inferers", "networks", "transforms", "utils", "__version__"]
