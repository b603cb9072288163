"""What the library and the project's tooling both need: one-line errors, outputs never replaced unasked, finding
the bundles. ``lmttm_monai.utils.readable_errors`` is imported by the bundle configs only (importing it installs an
exception hook)."""

from lmttm_monai.utils.bundles import BUNDLES_ENV, BundlesNotFoundError, bundle_names, bundles_dir
from lmttm_monai.utils.errors import UserError, one_line, root_cause
from lmttm_monai.utils.misc import comma_list
from lmttm_monai.utils.outputs import OutputExistsError, as_bool, atomic_path, existing_outputs, refuse_overwrite

__all__ = [
    "BUNDLES_ENV",
    "BundlesNotFoundError",
    "OutputExistsError",
    "UserError",
    "as_bool",
    "atomic_path",
    "bundle_names",
    "bundles_dir",
    "comma_list",
    "existing_outputs",
    "one_line",
    "refuse_overwrite",
    "root_cause",
]
