"""MONAI model-zoo's per-bundle CI test, for the four bundles, on small synthetic data.

As model-zoo's ``ci/unit_tests/test_<bundle>.py`` do, each bundle runs through ``monai.bundle.ConfigWorkflow`` with
``check_properties`` (the train / infer properties MONAI Label and the model-zoo rely on must all be found), in
model-zoo's order: train, then train + evaluate (``workflow_type="train"`` with ``[train.json, evaluate.json]``),
then infer. The bundle is a copy in a temporary folder (``bundle_root`` is overridden, so nothing is written into
the repository) and is trained once per module; evaluation and inference then load the checkpoint that training
kept (model-zoo disables inference's ``CheckpointLoader`` because its infer test has no trained model).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image
from zoo_helpers import check_workflow, write_decathlon_task, write_drive, write_medmnist_npz

from lmttm_monai.data import decathlon_datalist, drive_datalist

pytestmark = pytest.mark.slow


@dataclass
class ZooCase:
    """How model-zoo's test would drive one bundle: its synthetic data and its overrides."""

    name: str
    write_data: Callable[[Path], Path]  # writes the data under the given folder, returns the dataset_dir
    common: dict  # overrides for every workflow (beyond bundle_root and dataset_dir)
    train: dict = field(default_factory=dict)  # extra overrides for train and train + evaluate


CASES = {
    "lmttm": ZooCase(
        "lmttm",
        lambda folder: write_medmnist_npz(folder / "medmnist").parent,  # 8 / 4 / 4 volumes of 28^3
        common={"num_workers": 0},
        train={"epochs": 1, "batch_size": 4},  # 2 iterations
    ),
    "mam_swinunetr": ZooCase(
        "mam_swinunetr",
        lambda folder: write_decathlon_task(folder / "Task04_Hippocampus"),  # 10 cases: 8 / 1 / 1
        # roi_size stays 32x64x32: a 32^3 crop reaches the bottleneck as 1x1x1, which instance norm rejects
        common={"num_workers": 0, "cache_rate": 0.0, "max_cases": 2},
        train={"epochs": 1, "batch_size": 1, "num_samples": 1},  # 2 iterations
    ),
    "salstm": ZooCase(
        "salstm",
        lambda folder: write_decathlon_task(folder / "Task04_Hippocampus"),
        common={"num_workers": 0, "cache_rate": 0.0, "max_cases": 2, "image_size": 32},
        train={"epochs": 1, "batch_size": 1, "num_samples": 2},
    ),
    "mam_unetr": ZooCase(
        "mam_unetr",
        # 4 training cases (2 train, 2 val) and 2 test cases; not square, as DRIVE's 584x565 pictures are not
        lambda folder: write_drive(folder / "DRIVE", size=(96, 112)),
        common={"num_workers": 0, "cache_rate": 0.0, "val_cases": 2, "roi_size": [32, 32]},
        # no val_interval: the bundle's 4 follows epochs when fewer, as model-zoo's 1-epoch runs need
        train={"epochs": 1, "batch_size": 1, "num_samples": 2},  # 2 iterations
    ),
}


@dataclass
class TrainedCopy:
    case: ZooCase
    root: Path  # the bundle copy, trained
    overrides: dict  # bundle_root, dataset_dir and the case's common overrides
    dataset_dir: Path


def copy_bundle(name: str, folder: Path) -> Path:
    """A copy of ``bundles/NAME`` in ``folder`` without checkpoints, exports or TensorBoard logs."""
    ignore = shutil.ignore_patterns("*.pt", "*.ts", "events.out.tfevents.*")
    return Path(shutil.copytree(REPO_ROOT / "bundles" / name, folder / name, ignore=ignore))


def workflow(root: Path, workflow_type: str, configs: list[str], overrides: dict) -> ConfigWorkflow:
    return ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=[str(root / "configs" / f"{c}.json") for c in configs],
        logging_file=str(root / "configs" / "logging.conf"),
        meta_file=str(root / "configs" / "metadata.json"),
        **overrides,
    )


def train_copy(name: str, tmp_path_factory) -> TrainedCopy:
    """Write the synthetic data, copy the bundle and train it through ``ConfigWorkflow`` as model-zoo does."""
    case = CASES[name]
    folder = tmp_path_factory.mktemp(f"zoo_{name}")
    dataset_dir = case.write_data(folder / "data")
    root = copy_bundle(name, folder)
    overrides = {"bundle_root": str(root), "dataset_dir": str(dataset_dir), **case.common}
    check_workflow(workflow(root, "train", ["train"], {**overrides, **case.train}), check_properties=True)
    return TrainedCopy(case, root, overrides, dataset_dir)


def evaluate(trained: TrainedCopy) -> Path:
    """model-zoo's second step: ``[train.json, evaluate.json]`` with ``workflow_type="train"``; returns output_dir."""
    overrides = {**trained.overrides, **trained.case.train}
    check_workflow(workflow(trained.root, "train", ["train", "evaluate"], overrides), check_properties=True)
    return trained.root / "eval"


def infer(trained: TrainedCopy) -> tuple[Path, ConfigWorkflow]:
    """Inference with the checkpoint that training kept, into its own output folder (evaluation writes
    segmentations of the same test cases into ``eval``)."""
    output_dir = trained.root / "infer"
    overrides = {**trained.overrides, "output_dir": str(output_dir)}
    inferrer = workflow(trained.root, "infer", ["inference"], overrides)
    check_workflow(inferrer, check_properties=True)
    return output_dir, inferrer


def assert_kept_a_checkpoint_of_the_network(trained: TrainedCopy) -> None:
    checkpoint = trained.root / "models" / "model.pt"
    assert checkpoint.is_file(), f"training wrote no {checkpoint}"
    parser = ConfigParser()
    parser.read_config(str(trained.root / "configs" / "inference.json"))
    parser.update(pairs=trained.overrides)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))  # strict


def assert_loaded_the_trained_checkpoint(trained: TrainedCopy, inferrer: ConfigWorkflow) -> None:
    """Inference's CheckpointLoader ran: the network holds the trained weights, not a fresh initialisation."""
    state = torch.load(trained.root / "models" / "model.pt", map_location="cpu", weights_only=True)
    used = inferrer.parser.get_parsed_content("network").state_dict()
    assert used.keys() == state.keys()
    for key in state:
        torch.testing.assert_close(used[key], state[key], msg=lambda m, key=key: f"{key}: {m}")


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if row]


def metric_names(output_dir: Path) -> set[str]:
    return {row[0] for row in read_rows(output_dir / "metrics.csv")}


def raw_cases(output_dir: Path, metric: str) -> list[str]:
    """The files of the per-case rows of ``{metric}_raw.csv`` (MetricsSaver's ``metric_details``)."""
    _, *rows = read_rows(output_dir / f"{metric}_raw.csv")
    return sorted(Path(row[0]).name for row in rows)


def held_out_cases(trained: TrainedCopy) -> list[dict]:
    """The test split of a synthetic Decathlon task, as the bundle reads it."""
    return decathlon_datalist(trained.dataset_dir, "test", max_cases=trained.overrides["max_cases"])


@pytest.fixture(scope="module")
def lmttm(tmp_path_factory) -> TrainedCopy:
    return train_copy("lmttm", tmp_path_factory)


@pytest.fixture(scope="module")
def mam_swinunetr(tmp_path_factory) -> TrainedCopy:
    return train_copy("mam_swinunetr", tmp_path_factory)


@pytest.fixture(scope="module")
def salstm(tmp_path_factory) -> TrainedCopy:
    return train_copy("salstm", tmp_path_factory)


@pytest.fixture(scope="module")
def mam_unetr(tmp_path_factory) -> TrainedCopy:
    return train_copy("mam_unetr", tmp_path_factory)


# lmttm: MedMNIST 3D classification


def test_lmttm_trains_through_config_workflow_with_the_zoo_properties(lmttm):
    assert_kept_a_checkpoint_of_the_network(lmttm)


def test_lmttm_trains_and_evaluates_through_config_workflow_with_the_zoo_properties(lmttm):
    output_dir = evaluate(lmttm)
    assert metric_names(output_dir) == {"test_auc", "test_acc"}
    _, *rows = read_rows(output_dir / "test_predictions.csv")  # under the header row
    assert [row[0] for row in rows] == [f"adrenalmnist3d_test_{i:05d}" for i in range(4)]


def test_lmttm_infers_through_config_workflow_with_the_zoo_properties(lmttm):
    output_dir, inferrer = infer(lmttm)
    assert_loaded_the_trained_checkpoint(lmttm, inferrer)
    header, *rows = read_rows(output_dir / "predictions.csv")
    assert header == ["filename", "prob_normal", "prob_hyperplasia", "predicted_class"]
    assert [row[0] for row in rows] == [f"adrenalmnist3d_test_{i:05d}" for i in range(4)]
    for row in rows:  # two class probabilities, then the predicted class
        probabilities = np.array([float(v) for v in row[1:3]])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5) and row[3] == str(probabilities.argmax())


# mam_swinunetr: Task04 Hippocampus, 3D


def test_mam_swinunetr_trains_through_config_workflow_with_the_zoo_properties(mam_swinunetr):
    assert_kept_a_checkpoint_of_the_network(mam_swinunetr)


def test_mam_swinunetr_trains_and_evaluates_through_config_workflow_with_the_zoo_properties(mam_swinunetr):
    output_dir = evaluate(mam_swinunetr)
    assert metric_names(output_dir) == {"test_mean_dice", "test_hd95"}
    names = sorted(Path(c["image"]).name for c in held_out_cases(mam_swinunetr))
    assert raw_cases(output_dir, "test_mean_dice") == names


def test_mam_swinunetr_infers_through_config_workflow_with_the_zoo_properties(mam_swinunetr):
    output_dir, inferrer = infer(mam_swinunetr)
    assert_loaded_the_trained_checkpoint(mam_swinunetr, inferrer)
    assert_one_nifti_segmentation_per_input(output_dir, held_out_cases(mam_swinunetr))


# salstm: Task04 Hippocampus, 2.5D


def test_salstm_trains_through_config_workflow_with_the_zoo_properties(salstm):
    assert_kept_a_checkpoint_of_the_network(salstm)


def test_salstm_trains_and_evaluates_through_config_workflow_with_the_zoo_properties(salstm):
    output_dir = evaluate(salstm)
    assert metric_names(output_dir) == {"test_mean_dice", "test_hd95"}
    names = sorted(Path(c["image"]).name for c in held_out_cases(salstm))
    assert raw_cases(output_dir, "test_mean_dice") == names


def test_salstm_infers_through_config_workflow_with_the_zoo_properties(salstm):
    output_dir, inferrer = infer(salstm)
    assert_loaded_the_trained_checkpoint(salstm, inferrer)
    assert_one_nifti_segmentation_per_input(output_dir, held_out_cases(salstm))


def assert_one_nifti_segmentation_per_input(output_dir: Path, cases: list[dict]) -> None:
    expected = sorted(Path(c["image"]).name.replace(".nii.gz", "_seg.nii.gz") for c in cases)
    assert sorted(p.name for p in output_dir.iterdir()) == expected
    for case in cases:
        seg = nib.load(output_dir / Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz"))
        assert seg.shape == nib.load(case["image"]).shape  # in the input's voxel grid
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


# mam_unetr: DRIVE, 2D


def test_mam_unetr_trains_through_config_workflow_with_the_zoo_properties(mam_unetr):
    assert_kept_a_checkpoint_of_the_network(mam_unetr)


def test_mam_unetr_trains_and_evaluates_through_config_workflow_with_the_zoo_properties(mam_unetr):
    output_dir = evaluate(mam_unetr)
    assert metric_names(output_dir) == {"test_mean_dice", "test_hd95"}
    assert raw_cases(output_dir, "test_mean_dice") == ["01_test.tif", "02_test.tif"]


def test_mam_unetr_infers_through_config_workflow_with_the_zoo_properties(mam_unetr):
    output_dir, inferrer = infer(mam_unetr)
    assert_loaded_the_trained_checkpoint(mam_unetr, inferrer)
    cases = drive_datalist(mam_unetr.dataset_dir, "test")
    assert sorted(p.name for p in output_dir.iterdir()) == ["01_test_seg.png", "02_test_seg.png"]
    for case in cases:
        seg = np.array(Image.open(output_dir / Path(case["image"]).name.replace(".tif", "_seg.png")))
        assert seg.shape == np.array(Image.open(case["image"])).shape[:2]  # in the input's pixel grid
        assert set(np.unique(seg)) <= {0, 255}
