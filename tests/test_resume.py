"""Training survives SIGKILL: a real bundle run is killed in the middle of an epoch, resumed with ``--resume true``,
and ends with the same weights as an uninterrupted run with the same seed (``lmttm_monai.handlers.training_checkpoint``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

BUNDLES = REPO_ROOT / "bundles"
EPOCHS = 3


def command(bundle: str, data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    budget = {
        "lmttm": ["--epoch_length", "3", "--batch_size", "8", "--num_workers", "0"],
        # one loader worker: the workers' random transforms are reseeded each epoch too
        "salstm": ["--max_cases", "3", "--epoch_length", "3", "--batch_size", "2", "--num_samples", "2",
                   "--num_workers", "1"],
        # the one bundle with a learning-rate schedule (cosine over the epochs): a resume must restore it too
        "mam_unetr": ["--max_cases", "3", "--val_cases", "1", "--val_interval", "1", "--epoch_length", "3",
                      "--batch_size", "1", "--num_samples", "2", "--num_workers", "1"],
    }[bundle]  # fmt: skip
    return [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(BUNDLES / bundle / "configs" / "train.json"),
        "--dataset_dir", str(data_dir), "--epochs", str(EPOCHS), *budget,
        "--ckpt_dir", str(run_dir / "models"), "--output_dir", str(run_dir / "eval"), *extra,
    ]  # fmt: skip


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)


def kill_during_epoch(args: list[str], epoch: int, log: Path) -> None:
    """Start the run and SIGKILL it once it has logged the first iteration of ``epoch`` (mid-epoch)."""
    marker = f"Epoch: {epoch}/{EPOCHS}, Iter: 1/"
    with open(log, "w") as out:
        process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 900
        while marker not in log.read_text():
            assert process.poll() is None, f"the run ended before epoch {epoch}:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, "the run did not reach the epoch in time"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # the process and its data-loader workers, without any cleanup
        process.wait()
    assert process.returncode == -signal.SIGKILL


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("bundle", ["lmttm", "salstm", "mam_unetr"])
def test_a_run_killed_mid_epoch_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(
    bundle, tmp_path, medmnist_dir, hippocampus_dir, drive_dir
):
    data_dir = {"lmttm": medmnist_dir, "salstm": hippocampus_dir, "mam_unetr": drive_dir}[bundle]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = run(command(bundle, data_dir, whole))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    kill_during_epoch(command(bundle, data_dir, killed), epoch=2, log=tmp_path / "killed.log")
    # what the killed run left: epoch 1's full state, complete (atomic writes leave no temporary file behind)
    assert load(killed / "models" / "checkpoint.pt")["trainer"]["iteration"] == 3
    assert not list((killed / "models").glob(".*.tmp"))

    # a plain rerun refuses to start over the killed run's files, and says how to continue
    again = run(command(bundle, data_dir, killed))
    assert again.returncode == 1
    assert "checkpoint.pt" in again.stderr.splitlines()[-1] and "--resume true" in again.stderr.splitlines()[-1]

    resumed = run(command(bundle, data_dir, killed, "--resume", "true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing after epoch 1 of 3" in resumed.stdout + resumed.stderr
    assert "Epoch: 1/3" not in resumed.stdout  # epoch 1 was not trained again

    expected, got = load(whole / "models" / "checkpoint.pt"), load(killed / "models" / "checkpoint.pt")
    assert got["trainer"] == expected["trainer"] and got["trainer"]["iteration"] == EPOCHS * 3
    assert_same_weights(expected["network"], got["network"])
    assert got["best_metric"] == pytest.approx(expected["best_metric"]) and got["best_metric_epoch"] == expected["best_metric_epoch"]
    assert_same_weights(load(whole / "models" / "model.pt"), load(killed / "models" / "model.pt"))

    # resuming a finished run says so and changes nothing
    before = (killed / "models" / "checkpoint.pt").read_bytes()
    finished = run(command(bundle, data_dir, killed, "--resume", "true"))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "training had already finished (epoch 3 of 3" in finished.stdout + finished.stderr
    assert (killed / "models" / "checkpoint.pt").read_bytes() == before


def test_an_interrupted_folder_inference_rerun_with_resume_infers_only_the_inputs_without_an_output(
    hippocampus_dir, tmp_path
):
    from monai.bundle import ConfigParser

    config = str(BUNDLES / "salstm" / "configs" / "inference.json")
    parser = ConfigParser()
    parser.read_config(config)
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    for image in sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[:3]:
        (volumes / image.name).symlink_to(image)
    out = tmp_path / "out"
    infer = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--input_dir", str(volumes),
             "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(out), "--num_workers", "0"]  # fmt: skip
    first = run(infer)
    assert first.returncode == 0, first.stderr[-3000:]
    written = sorted(out.iterdir())
    assert len(written) == 3
    # what a run killed before its last volume leaves: whole files (atomic writes) for the first two
    missing = written[-1]
    expected = missing.read_bytes()
    missing.unlink()
    kept = {p: p.stat().st_mtime_ns for p in written[:2]}
    refused = run(infer)
    assert refused.returncode == 1
    assert "--resume true to infer only the inputs without one" in refused.stderr.splitlines()[-1]
    resumed = run([*infer, "--resume", "true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: 2 of 3 inputs already have their output" in resumed.stdout + resumed.stderr
    assert {p: p.stat().st_mtime_ns for p in written[:2]} == kept  # not written again
    assert missing.read_bytes() == expected
