"""End-to-end runs of bundles/mam_swinunetr through ``python -m monai.bundle`` on real Hippocampus volumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import (
    assert_export_matches_eager,
    bundle,
    config_list,
    dice,
    raises_naming,
    read_rows,
    run_module,
)
from conftest import REPO_ROOT
from monai.bundle import ConfigParser

from lmttm_monai.data import decathlon_datalist
from lmttm_monai.networks.nets import MemorySwinUNETR

BUNDLE = REPO_ROOT / "bundles" / "mam_swinunetr"
CONFIGS = BUNDLE / "configs"
TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / f"{n}.json") for n in ("train", "evaluate", "inference"))
PLAIN = str(CONFIGS / "swinunetr.json")
# a few real cases per split and two short iterations: the point is that every stage runs and writes its files
QUICK = ["--max_cases", "3", "--epochs", "1", "--train#trainer#epoch_length", "2", "--num_workers", "0",
         "--num_samples", "1"]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dirs(hippocampus_dir, tmp_path_factory):
    """Train briefly, then evaluate and infer with the kept checkpoint."""
    root = tmp_path_factory.mktemp("mam_swinunetr_run")
    paths = ["--dataset_dir", str(hippocampus_dir), "--ckpt_dir", str(root / "models")]
    logs = {
        "train": bundle("run", "training", "--config_file", TRAIN, *paths, "--output_dir", str(root / "train"), *QUICK),
        "evaluate": bundle(
            "run", "evaluating", "--config_file", config_list(TRAIN, EVALUATE), *paths,
            "--output_dir", str(root / "eval"), "--max_cases", "3", "--num_workers", "0",
        ),
        "infer": bundle(
            "run", "--config_file", INFERENCE, *paths, "--output_dir", str(root / "infer"), "--max_cases", "2",
            "--num_workers", "0",
        ),
    }  # fmt: skip
    return root, paths, logs


def test_training_keeps_the_best_validation_checkpoint_and_writes_logs(run_dirs):
    root, _, logs = run_dirs
    assert "val_mean_dice" in logs["train"]
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "swinViT.layers1.0.blocks.1.attn.relative_position_bias_table" in state
    assert list((root / "train").glob("events.out.tfevents.*"))


def test_evaluation_writes_dice_and_hd95_per_label_and_segmentations_in_each_input_space(run_dirs, hippocampus_dir):
    root, _, _ = run_dirs
    cases = decathlon_datalist(hippocampus_dir, "test", max_cases=3)
    metrics = dict(read_rows(root / "eval" / "metrics.csv"))
    assert set(metrics) == {"test_mean_dice", "test_hd95"}
    raw = read_rows(root / "eval" / "test_mean_dice_raw.csv")
    assert raw[0] == ["filename", "class0", "class1", "mean"]  # class0 = label 1 (anterior), class1 = posterior
    per_case = {Path(r[0]).name: [float(v) for v in r[1:3]] for r in raw[1:]}
    assert sorted(per_case) == sorted(Path(c["image"]).name for c in cases)
    assert len(read_rows(root / "eval" / "test_hd95_raw.csv")) == len(cases) + 1
    for case in cases:
        image, label = nib.load(case["image"]), nib.load(case["label"])
        name = Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        seg = nib.load(root / "eval" / name)
        assert seg.shape == image.shape  # the prediction is in the input's grid...
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)  # ...and the input's space
        seg_data = np.asarray(seg.dataobj)
        assert set(np.unique(seg_data)) <= {0, 1, 2}
        # the reported Dice is the Dice of the written file against the original label file
        ref = np.asarray(label.dataobj)
        for label_value, reported in zip((1, 2), per_case[Path(case["image"]).name]):
            assert dice(seg_data, ref, label_value) == pytest.approx(reported, abs=1e-4)


def test_inference_writes_one_segmentation_per_test_case(run_dirs, hippocampus_dir):
    root, _, _ = run_dirs
    cases = decathlon_datalist(hippocampus_dir, "test", max_cases=2)
    written = sorted(p.name for p in (root / "infer").glob("*_seg.nii.gz"))
    assert written == sorted(Path(c["image"]).name.replace(".nii.gz", "_seg.nii.gz") for c in cases)


def test_inference_on_a_folder_skips_bad_files_and_finishes_the_rest(run_dirs, hippocampus_dir, tmp_path):
    root, paths, _ = run_dirs
    cases = decathlon_datalist(hippocampus_dir, "test", max_cases=2)
    folder = tmp_path / "in"
    folder.mkdir()
    for case in cases:
        shutil.copy(case["image"], folder)
    (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
    nib.save(nib.Nifti1Image(np.zeros((40, 40), np.float32), np.eye(4)), folder / "slice_2d.nii.gz")
    out = tmp_path / "out"
    log = bundle("run", "--config_file", INFERENCE, *paths, "--output_dir", str(out), "--input_dir", str(folder),
                 "--num_workers", "0")  # fmt: skip
    assert "broken.nii.gz" in log and "slice_2d.nii.gz" in log and "skipping" in log
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == sorted(
        Path(c["image"]).name.replace(".nii.gz", "_seg.nii.gz") for c in cases
    )


def test_plain_swinunetr_baseline_is_one_override():
    parser = ConfigParser()
    parser.read_config([TRAIN, PLAIN])
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MemorySwinUNETR) and net.transmission == "none"
    default = ConfigParser()
    default.read_config(TRAIN)
    assert default.get_parsed_content("network_def").transmission == "ists"
    assert set(net.state_dict()) == set(default.get_parsed_content("network_def").state_dict())


def test_ckpt_export_writes_a_traced_model_with_the_eager_output(run_dirs):
    root, _, _ = run_dirs
    # SwinUNETR (MONAI's too) does not script; the spatial shape is fixed per crop, so tracing is exact
    trace = ["--use_trace", "True", "--input_shape", "[1, 1, 32, 64, 32]"]
    x = torch.randn(2, 1, 32, 64, 32)
    assert_export_matches_eager(root / "models", CONFIGS / "metadata.json", [INFERENCE], x, *trace)


def decathlon_copy(hippocampus_dir: Path, folder: Path, n: int = 2) -> list[dict]:
    """A small Decathlon folder with ``n`` real cases; returns its list items (absolute paths)."""
    items = decathlon_datalist(hippocampus_dir, "all", max_cases=n)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    entries = []
    for item in items:
        image = folder / "imagesTr" / Path(item["image"]).name
        label = folder / "labelsTr" / Path(item["label"]).name
        shutil.copy(item["image"], image)
        shutil.copy(item["label"], label)
        entries.append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"})
    (folder / "dataset.json").write_text(json.dumps({"training": entries}))
    return [{"image": str(folder / e["image"][2:]), "label": str(folder / e["label"][2:])} for e in entries]


def preprocessing():
    parser = ConfigParser()
    parser.read_config(TRAIN)
    return parser.get_parsed_content("validate#preprocessing")


def test_bad_pairs_are_clear_errors_that_name_the_file(hippocampus_dir, tmp_path):
    good, other = decathlon_copy(hippocampus_dir, tmp_path)
    transform = preprocessing()
    label = nib.load(good["label"])
    data = np.asarray(label.dataobj)

    cropped = tmp_path / "cropped_label.nii.gz"
    nib.save(nib.Nifti1Image(data[:-2], label.affine), cropped)
    raises_naming(r"cropped_label\.nii\.gz.*does not match", transform, {"image": good["image"], "label": cropped})

    out_of_range = tmp_path / "label_with_5.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data == 2, 5, data).astype(np.uint8), label.affine), out_of_range)
    raises_naming(r"label_with_5\.nii\.gz.*outside", transform, {"image": good["image"], "label": out_of_range})

    flat = tmp_path / "flat_2d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40), np.float32), np.eye(4)), flat)
    raises_naming(r"flat_2d\.nii\.gz.*expected a 3D image", transform, {"image": str(flat), "label": other["label"]})

    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    raises_naming(r"broken\.nii\.gz", transform, {"image": str(broken), "label": other["label"]})


def test_training_on_an_empty_dataset_json_list_fails_naming_the_file(hippocampus_dir, tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    result = run_module("run", "training", "--config_file", TRAIN, "--dataset_dir", str(tmp_path),
                        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"))  # fmt: skip
    assert result.returncode != 0
    assert f"{tmp_path / 'dataset.json'}: the 'training' list is missing or empty" in result.stderr
