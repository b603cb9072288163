"""Where the project's bundles are: one resolver for the command line, the MONAI Label app and the tooling.

The bundles (configs, docs, shipped weights) are package data: a wheel or a regular ``pip install .`` puts them in
``lmttm_monai/bundles`` (pyproject.toml maps the repository's top-level ``bundles/`` there). An editable install
(``pip install -e .``) uses the source tree's ``bundles/``, found from the install record (PEP 610
``direct_url.json``), so edits to a config take effect at once. ``LMTTM_MONAI_BUNDLES`` overrides both.
"""

from __future__ import annotations

import json
import os
from importlib import metadata, resources
from pathlib import Path
from urllib.parse import unquote, urlparse

from lmttm_monai.utils.errors import UserError

__all__ = ["BUNDLES_ENV", "BundlesNotFoundError", "bundle_names", "bundles_dir"]

BUNDLES_ENV = "LMTTM_MONAI_BUNDLES"
DISTRIBUTION = "lmttm-monai"


class BundlesNotFoundError(UserError):
    """Neither the environment, the installed package nor an editable source tree holds the bundles."""


def _is_bundles_dir(path: Path) -> bool:
    return path.is_dir() and any((p / "configs" / "metadata.json").is_file() for p in path.iterdir())


def _installed_copy() -> Path | None:
    # a mapped package without __init__.py is not importable, so look for the folder, not the module
    path = Path(str(resources.files("lmttm_monai"))) / "bundles"
    return path if _is_bundles_dir(path) else None


def _editable_source() -> Path | None:
    """The source tree of an editable install of this package, from its ``direct_url.json``."""
    package = Path(str(resources.files("lmttm_monai")))
    # every record of the distribution on sys.path: a source tree's own *.egg-info (no direct_url.json) may come first
    for dist in metadata.distributions(name=DISTRIBUTION):
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        url = urlparse(info.get("url", ""))
        if url.scheme != "file" or not info.get("dir_info", {}).get("editable"):
            continue
        source = Path(unquote(url.path))
        # the record may belong to another copy than the one imported (a second checkout on PYTHONPATH)
        if (source / "lmttm_monai").is_dir() and (source / "lmttm_monai").samefile(package):
            return source / "bundles" if _is_bundles_dir(source / "bundles") else None
    return None


def bundles_dir() -> Path:
    """The folder holding the bundles: ``$LMTTM_MONAI_BUNDLES``, else the installed copy, else an editable install's
    source tree. Raises :class:`BundlesNotFoundError` (one line saying how to point at them) when there is none."""
    override = os.environ.get(BUNDLES_ENV)
    if override:
        path = Path(override).expanduser()
        if not _is_bundles_dir(path):
            raise BundlesNotFoundError(
                f"{BUNDLES_ENV}={override}: not a folder of bundles (none holds configs/metadata.json)"
            )
        return path.resolve()
    found = _installed_copy() or _editable_source()
    if found is None:
        raise BundlesNotFoundError(
            f"no bundles installed with lmttm_monai ({Path(str(resources.files('lmttm_monai')))}): install the package "
            f"(pip install . or pip install -e .) or set {BUNDLES_ENV} to a folder of bundles"
        )
    return found.resolve()


def bundle_names() -> list[str]:
    """The names of the bundles in :func:`bundles_dir`, sorted."""
    return sorted(p.name for p in bundles_dir().iterdir() if (p / "configs" / "metadata.json").is_file())
