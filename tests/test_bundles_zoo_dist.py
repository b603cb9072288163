"""MONAI model-zoo's two-process bundle test (``ci/unit_tests/test_<bundle>_dist.py``) for every bundle's
``multi_gpu_train.json``, on CPU.

``[train.json, multi_gpu_train.json]`` plus the overrides are exported to one file and run by ``torchrun
--nproc_per_node=2 -m monai.bundle run`` (the configs pick the gloo backend without CUDA), on synthetic data with
enough cases for two iterations per process, in a copy of the bundle. DistributedDataParallel fails at the second
iteration when a parameter got no gradient in the first, so two iterations are what catches such a parameter (the
cross-attention LayerNorm of MONAI's TransformerBlock in mam_unetr did that before it was frozen).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from zoo_helpers import run_torchrun_train, write_decathlon_task, write_drive, write_medmnist_npz

pytestmark = pytest.mark.slow

# rank 0's StatsHandler line for the last iteration of the epoch: 2 iterations per process where one process alone
# would have 4 (each case below is sized for 4 batches in all)
TWO_ITERATIONS = re.compile(r"Epoch: 1/1, Iter: 2/2 -- train_loss")


def copy_bundle(name: str, folder: Path) -> Path:
    """A copy of ``bundles/NAME`` in ``folder`` without checkpoints, exports or TensorBoard logs."""
    ignore = shutil.ignore_patterns("*.pt", "*.ts", "events.out.tfevents.*")
    return Path(shutil.copytree(REPO_ROOT / "bundles" / name, folder / name, ignore=ignore))


def run_two_processes(name: str, tmp_path: Path, dataset_dir: Path, overrides: dict) -> Path:
    """model-zoo's ``test_train_mgpu_config`` for bundle ``name``; returns the bundle copy."""
    root = copy_bundle(name, tmp_path)
    configs = root / "configs"
    overrides = {"bundle_root": str(root), "dataset_dir": str(dataset_dir), "epochs": 1, "num_workers": 0, **overrides}
    log = run_torchrun_train(
        [configs / "train.json", configs / "multi_gpu_train.json"],
        meta_file=configs / "metadata.json",
        logging_file=configs / "logging.conf",
        overrides=overrides,
        output_path=configs / "train_override.json",
        nproc=2,
    )
    assert TWO_ITERATIONS.search(log), log[-4000:]
    # rank 0 alone saves, one checkpoint
    assert sorted(p.name for p in (root / "models").iterdir()) == ["checkpoint.pt", "model.pt"]  # one writer
    return root


def test_lmttm_multi_gpu_train_runs_two_gloo_processes_for_two_iterations(tmp_path):
    dataset_dir = write_medmnist_npz(tmp_path / "medmnist", n=(8, 4, 4)).parent
    # 8 training volumes: 4 per process, in 2 batches of 2; 4 validation volumes, 2 per process
    run_two_processes("lmttm", tmp_path, dataset_dir, {"batch_size": 2})


def test_mam_swinunetr_multi_gpu_train_runs_two_gloo_processes_for_two_iterations(tmp_path):
    # 20 cases split 16 / 2 / 2: every process gets a validation case
    dataset_dir = write_decathlon_task(tmp_path / "Task04_Hippocampus", n_cases=20)
    overrides = {"max_cases": 4, "batch_size": 1, "num_samples": 1, "cache_rate": 0.0}  # 4 training cases, 2 each
    run_two_processes("mam_swinunetr", tmp_path, dataset_dir, overrides)


def test_salstm_multi_gpu_train_runs_two_gloo_processes_for_two_iterations(tmp_path):
    dataset_dir = write_decathlon_task(tmp_path / "Task04_Hippocampus", n_cases=20)
    overrides = {"max_cases": 4, "batch_size": 1, "num_samples": 2, "image_size": 32, "cache_rate": 0.0}
    run_two_processes("salstm", tmp_path, dataset_dir, overrides)


def test_mam_unetr_multi_gpu_train_runs_two_gloo_processes_for_two_iterations(tmp_path):
    # 6 training cases: 4 to train (2 per process), 2 to validate (1 per process)
    dataset_dir = write_drive(tmp_path / "DRIVE", n_train=6, n_test=1)
    overrides = {"val_cases": 2, "val_interval": 1, "batch_size": 1, "num_samples": 2, "cache_rate": 0.0,
                 "roi_size": [32, 32]}
    run_two_processes("mam_unetr", tmp_path, dataset_dir, overrides)
