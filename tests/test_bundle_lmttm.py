"""End-to-end runs of bundles/lmttm through ``python -m monai.bundle`` on the real AdrenalMNIST3D files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from medmnist import Evaluator
from monai.bundle import ConfigParser

from bundle_helpers import assert_export_matches_eager, bundle, config_list, read_rows
from conftest import REPO_ROOT

BUNDLE = REPO_ROOT / "bundles" / "lmttm"
CONFIGS = BUNDLE / "configs"
TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / f"{n}.json") for n in ("train", "evaluate", "inference"))
# quick runs: 2 iterations of 8 volumes per epoch; validation, evaluation and inference still cover whole splits
QUICK = ["--epochs", "1", "--batch_size", "8", "--num_workers", "0", "--train#trainer#epoch_length", "2"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dirs(medmnist_dir, tmp_path_factory):
    """Train for a short epoch, then evaluate and infer with the checkpoint it kept."""
    root = tmp_path_factory.mktemp("lmttm_run")
    paths = ["--dataset_dir", str(medmnist_dir), "--ckpt_dir", str(root / "models"), "--output_dir", str(root / "eval")]
    logs = {
        "train": bundle("run", "training", "--config_file", TRAIN, *paths, *QUICK),
        "evaluate": bundle("run", "evaluating", "--config_file", config_list(TRAIN, EVALUATE), *paths, "--num_workers", "0"),
        "infer": bundle("run", "--config_file", INFERENCE, *paths, "--num_workers", "0"),
    }
    return root, paths, logs


def test_training_keeps_the_best_validation_checkpoint_and_writes_logs(run_dirs):
    root, _, logs = run_dirs
    assert "val_auc" in logs["train"] and "Epoch[1] Complete" in logs["train"]
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("memory.") for k in state)
    assert list((root / "eval").glob("events.out.tfevents.*")), "no TensorBoard log written"


def test_evaluation_writes_official_metrics_over_the_whole_test_split(run_dirs, medmnist_dir):
    root, _, _ = run_dirs
    metrics = {name: float(value) for name, value in read_rows(root / "eval" / "metrics.csv")}
    assert set(metrics) == {"test_auc", "test_acc"}
    assert 0.0 <= metrics["test_auc"] <= 1.0 and 0.0 <= metrics["test_acc"] <= 1.0
    header, *rows = read_rows(root / "eval" / "test_predictions.csv")
    assert header == ["filename", "prob_normal", "prob_hyperplasia", "predicted_class"]
    assert [r[0] for r in rows] == [f"adrenalmnist3d_test_{i:05d}" for i in range(298)]
    scores = np.array([[float(v) for v in r[1:3]] for r in rows])
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    official = Evaluator("adrenalmnist3d", "test", size=28, root=str(medmnist_dir)).evaluate(scores)
    assert metrics["test_auc"] == pytest.approx(official.AUC, abs=1e-6)
    assert metrics["test_acc"] == pytest.approx(official.ACC, abs=1e-6)


def test_inference_writes_probabilities_and_the_predicted_label_per_volume(run_dirs):
    root, _, _ = run_dirs
    header, *rows = read_rows(root / "eval" / "predictions.csv")
    # columns named by metadata's class names; the predicted class is an integer ("1", not "1.0")
    assert header == ["filename", "prob_normal", "prob_hyperplasia", "predicted_class"]
    assert len(rows) == 298
    for row in rows:
        probabilities = np.array([float(v) for v in row[1:3]])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert row[3] == str(int(np.argmax(probabilities)))


def test_inference_on_a_folder_skips_bad_volumes_and_finishes_the_rest(run_dirs, medmnist_dir, tmp_path):
    root, paths, _ = run_dirs
    with np.load(medmnist_dir / "adrenalmnist3d.npz") as npz:
        volumes = npz["test_images"][:2]
    nib.save(nib.Nifti1Image(volumes[0], np.eye(4)), tmp_path / "case_a.nii.gz")
    np.save(tmp_path / "case_b.npy", volumes[1])
    (tmp_path / "case_c.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    overrides = paths[:4] + ["--output_dir", str(out), "--input_dir", str(tmp_path), "--num_workers", "0"]
    log = bundle("run", "--config_file", INFERENCE, *overrides)
    assert "skipping" in log and "case_c.nii.gz" in log
    _, *rows = read_rows(out / "predictions.csv")
    assert [Path(r[0]).name for r in rows] == ["case_a.nii.gz", "case_b.npy"]


def test_ttm_overlay_trains_the_ttm_ablation_and_exports(medmnist_dir, tmp_path):
    ttm = str(CONFIGS / "ttm.json")
    log = bundle(
        "run", "training", "--config_file", config_list(TRAIN, ttm),
        "--dataset_dir", str(medmnist_dir), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
        *QUICK,
    )
    assert "val_auc" in log
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["memory.initial"].ndim == 2  # TTM: one memory of m tokens, not k linked units
    x = torch.rand(3, 1, 28, 28, 28)
    assert_export_matches_eager(tmp_path / "models", CONFIGS / "metadata.json", [INFERENCE, ttm], x)


def test_default_dataset_dir_is_medmnist_under_monai_data_directory_else_home_data(medmnist_dir, tmp_path, monkeypatch):
    # one rule for every bundle: $MONAI_DATA_DIRECTORY/<folder>, and ~/data/<folder> when the variable is unset
    home = tmp_path / "home"
    (home / "data" / "medmnist").mkdir(parents=True)
    os.symlink(medmnist_dir / "adrenalmnist3d.npz", home / "data" / "medmnist" / "adrenalmnist3d.npz")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MONAI_DATA_DIRECTORY", raising=False)
    monkeypatch.chdir(REPO_ROOT)
    parser = ConfigParser()
    parser.read_config(TRAIN)
    assert parser.get_parsed_content("bundle_root") == "bundles/lmttm"
    assert parser.get_parsed_content("dataset_dir") == str(home / "data" / "medmnist")
    assert len(parser.get_parsed_content("validate#dataset")) == 98
    monkeypatch.setenv("MONAI_DATA_DIRECTORY", str(medmnist_dir.parent))
    parser = ConfigParser()
    parser.read_config(TRAIN)
    assert parser.get_parsed_content("dataset_dir") == str(medmnist_dir.parent / "medmnist")


def test_ckpt_export_writes_torchscript_with_the_eager_logits(run_dirs):
    root, _, _ = run_dirs
    assert_export_matches_eager(root / "models", CONFIGS / "metadata.json", [INFERENCE], torch.rand(3, 1, 28, 28, 28))


def test_two_process_gloo_training_uses_disjoint_shards_and_only_rank_0_writes(medmnist_dir, tmp_path):
    record = tmp_path / "indices"
    record.mkdir()
    # test-only overlay: each rank records the dataset indices of the volumes it trained on
    probe = {
        "run": [
            "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, lambda engine: "
            f"open(os.path.join({str(record)!r}, 'rank%d.txt' % dist.get_rank()), 'a').write("
            "''.join('%d\\n' % int(item['index']) for item in engine.state.batch)))",
            "$@train#trainer.run()",
        ]
    }
    probe_file = tmp_path / "probe.json"
    probe_file.write_text(json.dumps(probe))
    configs = config_list(TRAIN, str(CONFIGS / "multi_gpu_train.json"), str(probe_file))
    bundle(
        "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m", "monai.bundle", "run", "training",
        "--config_file", configs, "--dataset_dir", str(medmnist_dir), "--ckpt_dir", str(tmp_path / "models"),
        "--output_dir", str(tmp_path / "eval"), *QUICK,
        module="torch.distributed.run",
        env={"OMP_NUM_THREADS": "1"},
    )
    shards = [set(map(int, (record / f"rank{r}.txt").read_text().split())) for r in (0, 1)]
    assert len(shards[0]) == 16 and len(shards[1]) == 16  # 2 iterations of 8 volumes on each rank
    assert not shards[0] & shards[1]
    assert (tmp_path / "models" / "model.pt").is_file()
    # one writer: the best model and the epoch checkpoint, no second copy, no temporary file
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["checkpoint.pt", "model.pt"]
    # rank 0 alone logs to TensorBoard: one writer for training and one for validation
    assert len(list((tmp_path / "eval").glob("events.out.tfevents.*"))) == 2
