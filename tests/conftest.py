"""Shared test fixtures.

Tests that need the real data in ``../shared/data`` skip with a reason when it is absent. With
``LMTTM_REQUIRE_SHARED_DATA=1`` (set by ``.ci/run``) they fail instead, so CI can never pass without them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LMTTM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
MEDMNIST_DIR = SHARED_DATA / "medmnist"
HIPPOCAMPUS_DIR = SHARED_DATA / "Task04_Hippocampus"
DRIVE_DIR = SHARED_DATA / "DRIVE"
# the metadata schema the bundles name, checked offline: lmttm_monai.bundle.zoo reads it from LMTTM_BUNDLE_SCHEMA
# (set here for the whole run, subprocesses included) instead of downloading it
SCHEMA = SHARED_DATA.parent / "schema" / "meta_schema_20240725.json"
if SCHEMA.is_file():
    os.environ.setdefault("LMTTM_BUNDLE_SCHEMA", str(SCHEMA))
# the bundles whose trained model the repository ships as models/model.pt (python -m lmttm_monai.bundle.ship)
SHIPPED_BUNDLES = ("lmttm", "mam_swinunetr", "mam_unetr", "salstm")


# test files whose tests share no expensive module fixture: under pytest -n their tests spread over the workers
INDEPENDENT_TESTS = {"test_bad_inputs", "test_bench", "test_cli", "test_determinism", "test_figures", "test_readme",
                     "test_resume", "test_results", "test_shipped_models"}  # fmt: skip


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n N --dist loadgroup`` each test file runs on one worker, so that its module fixtures (a
    trained model, a server) are built once; the files of ``INDEPENDENT_TESTS`` spread test by test."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.module.__name__
            item.add_marker(pytest.mark.xdist_group(item.nodeid if module in INDEPENDENT_TESTS else module))


def require_path(path: Path) -> Path:
    if not path.exists():
        message = f"real data not found at {path} (the project reads it from ../shared/data)"
        if os.environ.get("LMTTM_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message + "; LMTTM_REQUIRE_SHARED_DATA=1 forbids skipping")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def medmnist_dir() -> Path:
    """Folder with the real adrenalmnist3d.npz and adrenalmnist3d_64.npz."""
    require_path(MEDMNIST_DIR / "adrenalmnist3d.npz")
    require_path(MEDMNIST_DIR / "adrenalmnist3d_64.npz")
    return MEDMNIST_DIR


@pytest.fixture(scope="session")
def hippocampus_dir() -> Path:
    """Decathlon Task04_Hippocampus folder (dataset.json, imagesTr, labelsTr)."""
    return require_path(HIPPOCAMPUS_DIR / "dataset.json").parent


@pytest.fixture(scope="session")
def drive_dir() -> Path:
    """DRIVE folder (training/ and test/ with images, 1st_manual and mask)."""
    return require_path(DRIVE_DIR / "training" / "images").parents[1]
