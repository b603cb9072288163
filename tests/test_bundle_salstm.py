"""End-to-end runs of bundles/salstm through ``python -m monai.bundle`` on a few real Task04 Hippocampus volumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import assert_export_matches_eager, bundle, config_list, read_rows, run_module
from conftest import REPO_ROOT
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet

from lmttm_monai.experiments import records
from lmttm_monai.data import decathlon_datalist

BUNDLE = REPO_ROOT / "bundles" / "salstm"
CONFIGS = BUNDLE / "configs"
TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / f"{n}.json") for n in ("train", "evaluate", "inference"))
UNET, LSTMSA = str(CONFIGS / "unet.json"), str(CONFIGS / "lstmsa.json")
# quick runs: 3 volumes per split, 2 iterations of 2 volumes x 2 slices, one epoch
CASES = ["--max_cases", "3", "--num_workers", "0"]
QUICK = [*CASES, "--epochs", "1", "--batch_size", "2", "--num_samples", "2", "--train#trainer#epoch_length", "2"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dirs(hippocampus_dir, tmp_path_factory):
    """Train SALSTM for two iterations, then evaluate and infer with the checkpoint it kept."""
    root = tmp_path_factory.mktemp("salstm_run")
    paths = ["--dataset_dir", str(hippocampus_dir), "--ckpt_dir", str(root / "models")]
    paths += ["--output_dir", str(root / "eval")]
    logs = {
        "train": bundle("run", "training", "--config_file", TRAIN, *paths, *QUICK),
        "evaluate": bundle("run", "evaluating", "--config_file", config_list(TRAIN, EVALUATE), *paths, *CASES),
        "infer": bundle("run", "--config_file", INFERENCE, *paths, *CASES, "--output_dir", str(root / "infer")),
    }
    return root, paths, logs


def test_training_keeps_the_best_validation_checkpoint_and_writes_logs(run_dirs):
    root, _, logs = run_dirs
    assert "val_mean_dice" in logs["train"] and "Epoch[1] Complete" in logs["train"]
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("forward_lstm.cell.") for k in state) and any(k.startswith("reverse_lstm.") for k in state)
    assert list((root / "eval").glob("events.out.tfevents.*")), "no TensorBoard log written"


def test_evaluation_writes_dice_and_hd95_per_label_for_every_test_volume(run_dirs, hippocampus_dir):
    root, _, _ = run_dirs
    metrics = {name: float(value) for name, value in read_rows(root / "eval" / "metrics.csv")}
    assert set(metrics) == {"test_mean_dice", "test_hd95"}
    assert 0.0 <= metrics["test_mean_dice"] <= 1.0
    expected = [item["image"] for item in decathlon_datalist(hippocampus_dir, "test", max_cases=3)]
    for name in ("test_mean_dice", "test_hd95"):
        header, *rows = read_rows(root / "eval" / f"{name}_raw.csv")
        assert header == ["filename", "class0", "class1", "mean"]  # class0: anterior (1), class1: posterior (2)
        assert [row[0] for row in rows] == expected
        summary = {row[0]: row[1:] for row in read_rows(root / "eval" / f"{name}_summary.csv")}
        assert {"class0", "class1", "mean"} <= set(summary)
    dice = np.array([[float(v) for v in row[1:]] for row in read_rows(root / "eval" / "test_mean_dice_raw.csv")[1:]])
    assert ((dice >= 0) & (dice <= 1)).all()
    assert dice[:, 2].mean() == pytest.approx(metrics["test_mean_dice"], abs=1e-5)
    # the results command's per-label means are MONAI's own per-class summary means
    per_label = records.read_per_label(root / "eval", ("test_mean_dice", "test_hd95"))
    for name in ("test_mean_dice", "test_hd95"):
        header, *rows = read_rows(root / "eval" / f"{name}_summary.csv")
        means = {row[0]: float(row[header.index("mean")]) for row in rows}
        # MONAI writes 4 decimals; a label that no case predicted has a NaN HD95 in both
        assert per_label[name] == pytest.approx([means["class0"], means["class1"]], abs=1e-4, nan_ok=True)


def test_inference_saves_label_volumes_in_the_inputs_space(run_dirs, hippocampus_dir):
    root, _, _ = run_dirs
    images = [Path(item["image"]) for item in decathlon_datalist(hippocampus_dir, "test", max_cases=3)]
    for image in images:
        out = root / "infer" / image.name.replace(".nii.gz", "_seg.nii.gz")
        assert out.is_file(), f"{out} not written"
        saved, source = nib.load(out), nib.load(image)
        assert saved.shape == source.shape
        np.testing.assert_allclose(saved.affine, source.affine, atol=1e-6)
        assert saved.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(saved.dataobj))) <= {0, 1, 2}


def test_inference_on_a_folder_skips_bad_files_and_finishes_the_rest(run_dirs, hippocampus_dir, tmp_path):
    root, paths, _ = run_dirs
    images = [Path(item["image"]) for item in decathlon_datalist(hippocampus_dir, "test", max_cases=2)]
    for image in images:
        shutil.copy(image, tmp_path / image.name)
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), tmp_path / "slice_2d.nii.gz")
    out = tmp_path / "out"
    log = bundle("run", "--config_file", INFERENCE, *paths[:4], "--output_dir", str(out), "--input_dir", str(tmp_path))
    assert "skipping" in log and "broken.nii.gz" in log and "slice_2d.nii.gz" in log
    assert sorted(p.name for p in out.iterdir()) == sorted(i.name.replace(".nii.gz", "_seg.nii.gz") for i in images)


def test_ckpt_export_writes_torchscript_with_the_eager_logits(run_dirs):
    root, _, _ = run_dirs
    assert_export_matches_eager(root / "models", CONFIGS / "metadata.json", [INFERENCE], torch.rand(3, 3, 64, 48))


def test_plain_unet_overlay_trains_the_basic_unet_baseline_and_exports(hippocampus_dir, tmp_path):
    models = tmp_path / "models"
    bundle(
        "run", "training", "--config_file", config_list(TRAIN, UNET), "--dataset_dir", str(hippocampus_dir),
        "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "eval"), *QUICK,
    )
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert all(k.startswith("unet.") for k in state)
    plain = BasicUNet(2, 1, 3, features=(16, 16, 32, 64, 128, 16))
    plain.load_state_dict({k.removeprefix("unet."): v for k, v in state.items()})  # exactly a BasicUNet
    assert_export_matches_eager(models, CONFIGS / "metadata.json", [INFERENCE, UNET], torch.rand(3, 3, 64, 48))


def test_configs_agree_and_find_the_data_under_monai_data_directory_from_the_repository_root(hippocampus_dir, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("MONAI_DATA_DIRECTORY", str(hippocampus_dir.parent))
    train, infer = ConfigParser(), ConfigParser()
    train.read_config(TRAIN)
    infer.read_config(INFERENCE)
    assert train["network_def"] == infer["network_def"]
    for key in ("bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "split_ratios", "split_seed", "slice_axis"):
        assert train[key] == infer[key], key
    assert train.get_parsed_content("bundle_root") == "bundles/salstm"
    assert Path(train.get_parsed_content("dataset_dir")).resolve() == hippocampus_dir.resolve()
    # the same held-out parts as decathlon_datalist's default split, which the MAM bundles use too
    for section, split in (("train", "train"), ("validate", "val")):
        assert train.get_parsed_content(f"{section}#dataset#data") == decathlon_datalist(hippocampus_dir, split)
    lstmsa = ConfigParser()
    lstmsa.read_config([TRAIN, LSTMSA])
    assert lstmsa.get_parsed_content("network_def").attention == "lstmsa"


# ---------------------------------------------------------------- bad input


def write_case(folder: Path, name: str, image: np.ndarray, label: np.ndarray | None) -> dict:
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "imagesTr" / name)
    if label is not None:
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labelsTr" / name)
    return {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"}


@pytest.fixture
def real_case(hippocampus_dir):
    item = decathlon_datalist(hippocampus_dir, "val", max_cases=1)[0]
    return np.asarray(nib.load(item["image"]).dataobj), np.asarray(nib.load(item["label"]).dataobj).astype(np.uint8)


def bad_dataset(folder: Path, real_case, defect: str) -> Path:
    image, label = real_case
    cases = [write_case(folder, "good_001.nii.gz", image, label)]
    if defect == "label shape mismatch":
        cases.append(write_case(folder, "bad_002.nii.gz", image, label[:-2]))
    elif defect == "labels outside classes":
        cases.append(write_case(folder, "bad_002.nii.gz", image, np.where(label > 0, 5, 0).astype(np.uint8)))
    elif defect == "2D image":
        cases.append(write_case(folder, "bad_002.nii.gz", image[:, :, 10], label[:, :, 10]))
    elif defect == "unreadable NIfTI":
        cases.append(write_case(folder, "bad_002.nii.gz", image, label))
        (folder / "imagesTr" / "bad_002.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (folder / "dataset.json").write_text(json.dumps({"training": cases if defect != "empty list" else []}))
    return folder


def error_text(excinfo: pytest.ExceptionInfo) -> str:
    parts, error = [], excinfo.value
    while error is not None:
        parts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(
    "defect,message",
    [
        ("label shape mismatch", "does not match image"),
        ("labels outside classes", "outside the declared classes"),
        ("2D image", "expected a 3D image"),
        ("unreadable NIfTI", "bad_002.nii.gz"),
        ("empty list", "missing or empty"),
    ],
)
def test_bad_training_data_fails_with_an_error_that_names_the_file(real_case, tmp_path, defect, message):
    folder = bad_dataset(tmp_path, real_case, defect)
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"dataset_dir": str(folder), "num_workers": 0, "split_ratios": [1, 0, 0]})
    with pytest.raises(Exception) as excinfo:
        parser.get_parsed_content("train#dataset")
    text = error_text(excinfo)
    assert message in text
    assert ("bad_002.nii.gz" if defect != "empty list" else "dataset.json") in text


def test_the_bundle_command_reports_the_bad_file_and_exits_nonzero(real_case, tmp_path):
    folder = bad_dataset(tmp_path / "data", real_case, "label shape mismatch")
    result = run_module(
        "run", "training", "--config_file", TRAIN, "--dataset_dir", str(folder), "--split_ratios", "[1, 0, 0]",
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), "--num_workers", "0",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "bad_002.nii.gz" in output and "does not match image" in output


def test_two_process_gloo_training_runs_and_only_rank_0_writes(hippocampus_dir, tmp_path):
    bundle(
        "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m", "monai.bundle", "run", "training",
        "--config_file", config_list(TRAIN, str(CONFIGS / "multi_gpu_train.json")),
        "--dataset_dir", str(hippocampus_dir), "--ckpt_dir", str(tmp_path / "models"),
        "--output_dir", str(tmp_path / "eval"), *QUICK,
        module="torch.distributed.run",
        env={"OMP_NUM_THREADS": "1"},
    )
    # one writer: the best model and the epoch checkpoint, no second copy, no temporary file
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["checkpoint.pt", "model.pt"]
    # rank 0 alone logs to TensorBoard: one writer for training and one for validation
    assert len(list((tmp_path / "eval").glob("events.out.tfevents.*"))) == 2
