"""Determinism on CPU, reduced precision, and concurrent runs, through the bundles' own configs.

Two training runs with one seed ending with equal weights is pinned by ``tests/test_resume.py`` (an uninterrupted run
and a killed-and-resumed one, compared parameter by parameter). Here: evaluation repeated and at another batch size,
training steps under CPU bfloat16 autocast (MONAI's ``amp`` is CUDA-only: ``torch.autocast("cuda")``, so this is the
reduced-precision path a CPU can run), and eight inference runs at once into one folder.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from bundle_helpers import config_list, run_module
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

BUNDLES = REPO_ROOT / "bundles"


def configs(bundle: str, *names: str) -> list[str]:
    return [str(BUNDLES / bundle / "configs" / f"{name}.json") for name in names]


def save_initial_weights(bundle: str, folder: Path, seed: int = 0) -> Path:
    """``folder/model.pt``: the bundle network's seeded initial weights, a checkpoint without a training run."""
    parser = ConfigParser()
    parser.read_config(configs(bundle, "inference"))
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "model.pt")
    return folder


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_evaluating_a_checkpoint_twice_is_bit_identical_and_another_batch_size_agrees_to_rounding(medmnist_dir, tmp_path):
    models = save_initial_weights("lmttm", tmp_path / "models")
    evaluate = config_list(*configs("lmttm", "train", "evaluate"))

    def run(name: str, batch_size: int) -> Path:
        result = run_module("run", "evaluating", "--config_file", evaluate, "--dataset_dir", str(medmnist_dir),
                            "--ckpt_dir", str(models), "--output_dir", str(tmp_path / name), "--num_workers", "0",
                            "--batch_size", str(batch_size))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return tmp_path / name

    first, second, other = run("first", 32), run("second", 32), run("other", 7)
    assert (first / "test_predictions.csv").read_bytes() == (second / "test_predictions.csv").read_bytes()
    assert (first / "metrics.csv").read_bytes() == (second / "metrics.csv").read_bytes()
    # another batch size: BLAS sums in another order, so the last bits may differ; the samples never mix
    a, b = read_rows(first / "test_predictions.csv"), read_rows(other / "test_predictions.csv")
    assert len(a) == len(b) == 299 and [r[0] for r in a] == [r[0] for r in b]
    probabilities = np.array([[float(v) for v in r[1:-1]] for r in a[1:]])
    np.testing.assert_allclose(probabilities, np.array([[float(v) for v in r[1:-1]] for r in b[1:]]), atol=1e-6)
    assert [r[-1] for r in a] == [r[-1] for r in b]


def plain(value) -> torch.Tensor:
    return value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)


BF16_OVERRIDES = {
    "lmttm": {"dataset_dir": "medmnist", "batch_size": 4},
    "mam_swinunetr": {"dataset_dir": "Task04_Hippocampus", "max_cases": 2, "num_samples": 1, "batch_size": 1},
    "mam_unetr": {"dataset_dir": "DRIVE", "max_cases": 2, "num_samples": 1, "batch_size": 1},
    "salstm": {"dataset_dir": "Task04_Hippocampus", "max_cases": 3, "num_samples": 2, "batch_size": 2},
}


@pytest.mark.parametrize("bundle", sorted(BF16_OVERRIDES))
def test_training_steps_under_cpu_bfloat16_autocast_keep_losses_and_gradients_finite(bundle, medmnist_dir):
    overrides = dict(BF16_OVERRIDES[bundle])
    overrides["dataset_dir"] = str(medmnist_dir.parent / overrides["dataset_dir"])
    parser = ConfigParser()
    parser.read_config(configs(bundle, "train"))
    parser.update({**overrides, "num_workers": 0, "device": "$torch.device('cpu')", "cache_rate": 0.0})
    torch.manual_seed(0)
    network, loss_function = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    loader = parser.get_parsed_content("train#dataloader")
    network.train()
    losses = []
    for step, batch in zip(range(2), loader):
        image, label = plain(batch["image"]), plain(batch["label"])
        if bundle == "lmttm":
            label = label.reshape(-1).long()
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_function(network(image), label)
        loss.backward()
        gradients = [p.grad for p in network.parameters() if p.grad is not None]
        assert gradients and all(torch.isfinite(g).all() for g in gradients), f"step {step}"
        optimizer.step()
        losses.append(loss.item())
    assert len(losses) == 2 and all(np.isfinite(losses)), losses


def test_eight_inference_runs_into_one_folder_leave_every_output_whole(hippocampus_dir, tmp_path):
    models = save_initial_weights("salstm", tmp_path / "models")
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    for image in sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[:2]:
        (volumes / image.name).symlink_to(image)
    out = tmp_path / "shared_output"

    def infer(output_dir: Path) -> list[str]:
        return [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs("salstm", "inference")[0],
                "--input_dir", str(volumes), "--ckpt_dir", str(models), "--output_dir", str(output_dir),
                "--num_workers", "0"]  # fmt: skip

    runs = [subprocess.Popen(infer(out), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(8)]  # fmt: skip
    results = [(run.wait(timeout=1200), run.stderr.read()) for run in runs]  # stderr is small: no pipe fills up
    for code, stderr in results:
        # each run either wrote all its outputs, or saw another's finished file and refused up front
        lines = stderr.strip().splitlines()
        assert code == 0 or (code == 1 and "exists, written by an earlier run" in lines[-1]), stderr[-2000:]
    assert any(code == 0 for code, _ in results)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name.replace(".nii.gz", "_seg.nii.gz") for p in volumes.iterdir())  # nothing hidden left
    # every file is whole and equals what one run alone writes
    alone = tmp_path / "alone"
    single = subprocess.run(infer(alone), cwd=REPO_ROOT, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    for name in written:
        np.testing.assert_array_equal(np.asarray(nib.load(out / name).dataobj), np.asarray(nib.load(alone / name).dataobj))
