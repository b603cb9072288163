"""Bad input, tried for real: each bad file, setting or checkpoint given to a bundle the way a user gives it.

Every test runs the real command (``python -m monai.bundle run ... --config_file bundles/NAME/configs/...json`` in a
subprocess from the repository root, outputs and checkpoints in ``tmp_path``; ``lmttm-monai`` where the CLI is what
checks) and asserts its exit status and the last line of its output: the line the user reads, which must name the
file (or key) and the problem. ``docs/reliability.md`` lists the same inputs with these lines.

The bad inputs are made from the real data in ``../shared/data`` where there is one (a hippocampus MRI with NaN
voxels, the AdrenalMNIST3D file cut in half); the checkpoints are the bundles' own networks, freshly initialised,
since a load fails or succeeds on the names and shapes of the tensors, not their values.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from conftest import REPO_ROOT

CONFIGS = {name: REPO_ROOT / "bundles" / name / "configs" for name in ("lmttm", "mam_swinunetr", "mam_unetr", "salstm")}
CLI = Path(sys.executable).parent / "lmttm-monai"
HINT = "(set LMTTM_DEBUG=1 for the full traceback)"
NO_INTERNET = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # a download fails at once
MAX_VOXELS = 256**3  # the segmentation inference configs' default max_voxels
# a too-large input is refused from its header: the run's peak memory stays within this of the same bundle refusing a
# missing file, far less than reading the input would add (315 MB for the CT below, 192 MB for the picture)
REFUSAL_MARGIN_KB = 100_000

pytestmark = pytest.mark.slow


@dataclass
class Run:
    returncode: int
    output: str  # stdout and stderr as one stream, in the order written
    max_rss_kb: int  # peak resident memory of the run (ru_maxrss of the process, in kilobytes on Linux)

    @property
    def last_line(self) -> str:
        lines = [line for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else ""


# Peak memory of a command, measured by a small Python process that starts it and reads its resource use with
# wait4. Measuring from here would not do: a child's ru_maxrss starts at the RSS of the process it was forked from
# (Linux keeps the high-water mark across exec), which here is pytest with torch loaded.
_MEASURE = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(*args: str, timeout: float = 900) -> Run:
    """Run ``args`` from the repository root as a user would in a terminal (unbuffered output, both streams on one)
    and measure its peak memory (ru_maxrss, see ``_MEASURE``)."""
    with tempfile.TemporaryDirectory() as scratch:
        rss_file = os.path.join(scratch, "max_rss_kb")
        env = {**os.environ, **NO_INTERNET, "PYTHONUNBUFFERED": "1"}
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, rss_file, *args], cwd=REPO_ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
        )  # fmt: skip
        with open(rss_file) as f:
            return Run(result.returncode, result.stdout, int(f.read()))


def bundle_run(bundle: str, *args: str, configs: tuple[str, ...] = ("inference",), workflow: str = "run") -> Run:
    """``python -m monai.bundle run [WORKFLOW] --config_file CONFIGS ARGS --num_workers 0``."""
    files = [str(CONFIGS[bundle] / f"{name}.json") for name in configs]
    config_file = files[0] if len(files) == 1 else json.dumps(files)
    head = ["run"] if workflow == "run" else ["run", workflow]
    return run(sys.executable, "-m", "monai.bundle", *head, "--config_file", config_file, *args, "--num_workers", "0")


def assert_refused(result: Run, line: str) -> None:
    """The run failed with status 1, ending with the hint and then ``line``, and without a traceback."""
    assert result.returncode == 1, result.output[-3000:]
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert lines[-2:] == [HINT, line], result.output[-3000:]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------------------------
# the inputs, made from real files where there are some


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``ckpt_dir`` of every bundle: its inference network's state dict, freshly initialised, as ``model.pt``."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    folders = {}
    for name, configs in CONFIGS.items():
        parser = ConfigParser()
        parser.read_config(str(configs / "inference.json"))
        folders[name] = root / name
        folders[name].mkdir()
        torch.save(parser.get_parsed_content("network_def").state_dict(), folders[name] / "model.pt")
    return folders


def small_medmnist(medmnist_dir: Path, folder: Path, **changes) -> Path:
    """A MedMNIST folder whose ``adrenalmnist3d.npz`` holds the first 4/2/2 real volumes of each split; ``changes``
    replace arrays (``None`` drops one)."""
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(medmnist_dir / "adrenalmnist3d.npz") as real:
        arrays = {key: real[key][: 4 if key.startswith("train") else 2] for key in real.files}
    arrays.update(changes)
    np.savez(folder / "adrenalmnist3d.npz", **{k: v for k, v in arrays.items() if v is not None})
    return folder


@pytest.fixture(scope="module")
def hippocampus_case(hippocampus_dir) -> dict[str, Path]:
    """One real case of the Decathlon list: ``{"image": ..., "label": ...}``."""
    entry = json.loads((hippocampus_dir / "dataset.json").read_text())["training"][0]
    return {key: hippocampus_dir / entry[key] for key in ("image", "label")}


def real_volume(case: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(case["image"])
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def with_broken_affine(path: Path, volume: np.ndarray, value: float) -> Path:
    """``volume`` as a NIfTI whose sform (the only geometry it declares) is all ``value``: what a converter that
    lost the geometry writes. nibabel refuses to build such an image, so the header is edited."""
    image = nib.Nifti1Image(volume, np.eye(4))
    header = image.header
    for row in ("srow_x", "srow_y", "srow_z"):
        header[row] = [value] * 4
    header["sform_code"], header["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(volume, None, header=header), path)
    return path


def sparse_nifti(path: Path, shape: tuple[int, ...], dtype=np.float32) -> Path:
    """A full-size NIfTI of zeros (``.nii``, not compressed) written as a sparse file: big to any reader, light on
    the test machine's disk."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([0.8, 0.8, 2.5, 1.0]), code=1)  # a CT's spacing
    header["vox_offset"] = 352
    with open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4)  # 348 header bytes and an empty extension block
        f.truncate(352 + math.prod(shape) * np.dtype(dtype).itemsize)
    assert nib.load(path).shape == shape
    return path


def decathlon_folder(folder: Path, image: Path, label: np.ndarray, affine: np.ndarray) -> Path:
    """A one-case Decathlon task folder: the real ``image`` with ``label`` as its label map."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    shutil.copy(image, folder / "imagesTr" / "case.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / "case.nii.gz")
    entry = {"image": "./imagesTr/case.nii.gz", "label": "./labelsTr/case.nii.gz"}
    (folder / "dataset.json").write_text(json.dumps({"training": [entry]}))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# MedMNIST files (lmttm)


def lmttm_inference(dataset_dir: Path, checkpoints: dict[str, Path], tmp_path: Path, *args: str) -> Run:
    ckpt = ["--ckpt_dir", str(checkpoints["lmttm"])]
    return bundle_run("lmttm", "--dataset_dir", str(dataset_dir), *ckpt, "--output_dir", str(tmp_path / "out"), *args)


def test_truncated_npz_is_refused_as_unreadable(medmnist_dir, checkpoints, tmp_path):
    folder = tmp_path / "medmnist"
    folder.mkdir()
    real = (medmnist_dir / "adrenalmnist3d.npz").read_bytes()
    npz = folder / "adrenalmnist3d.npz"
    npz.write_bytes(real[: len(real) // 2])  # a download cut off half way
    result = lmttm_inference(folder, checkpoints, tmp_path)
    assert_refused(
        result,
        f"error: ValueError: {npz} is not a readable MedMNIST .npz file (BadZipFile: File is not a zip file); "
        "delete it and download it again.",
    )


def test_npz_without_the_split_arrays_names_the_missing_one_and_what_it_holds(medmnist_dir, checkpoints, tmp_path):
    folder = small_medmnist(medmnist_dir, tmp_path / "medmnist", test_images=None, test_labels=None)
    result = lmttm_inference(folder, checkpoints, tmp_path)
    assert_refused(
        result,
        f"error: ValueError: {folder / 'adrenalmnist3d.npz'} has no 'test_images' array (it holds train_images, "
        "train_labels, val_images, val_labels): it is not a MedMNIST file; delete it and download it again.",
    )


def test_npz_images_of_another_type_than_uint8_are_refused(medmnist_dir, checkpoints, tmp_path):
    with np.load(medmnist_dir / "adrenalmnist3d.npz") as real:
        floats = real["test_images"][:2].astype(np.float64) / 255.0  # scaled to 0..1 already: would be read as black
    folder = small_medmnist(medmnist_dir, tmp_path / "medmnist", test_images=floats)
    result = lmttm_inference(folder, checkpoints, tmp_path)
    assert_refused(
        result,
        f"error: ValueError: {folder / 'adrenalmnist3d.npz'}: test_images has voxels of type float64, expected "
        "uint8 (0..255) as MedMNIST stores them; convert them (for example numpy.clip(x, 0, 255).astype(numpy.uint8)) "
        "or download the file again.",
    )


# ---------------------------------------------------------------------------------------------------------------
# volumes given to the segmentation bundles' inference (one file as --input_dir)


def seg_inference(bundle: str, checkpoints: dict[str, Path], tmp_path: Path, input_path: Path, *args: str) -> Run:
    paths = ["--ckpt_dir", str(checkpoints[bundle]), "--output_dir", str(tmp_path / "out")]
    return bundle_run(bundle, *paths, "--input_dir", str(input_path), *args)


def test_nan_and_infinite_voxels_are_refused_with_their_count(hippocampus_case, checkpoints, tmp_path):
    volume, affine = real_volume(hippocampus_case)
    volume[10, 20, 15], volume[11, 20, 15] = np.nan, np.inf
    path = tmp_path / "nan_voxels.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    result = seg_inference("mam_swinunetr", checkpoints, tmp_path, path)
    assert_refused(
        result,
        f"error: ValueError: {path}: 2 of {volume.size} voxels are NaN or infinite (the first at index (10, 20, 15)); "
        "replace them before inference.",
    )


def test_complex_voxels_are_refused_as_not_real_numbers(hippocampus_case, checkpoints, tmp_path):
    volume, affine = real_volume(hippocampus_case)
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(volume.astype(np.complex64), affine), path)  # raw MRI data can be complex
    result = seg_inference("salstm", checkpoints, tmp_path, path)
    assert_refused(
        result,
        f"error: ValueError: {path}: has voxels of type complex64, not real numbers (expected integers or floating "
        "point).",
    )


def test_a_4d_volume_is_refused_with_its_shape(hippocampus_case, checkpoints, tmp_path):
    volume, affine = real_volume(hippocampus_case)
    path = tmp_path / "two_echoes.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([volume, volume], axis=-1), affine), path)
    result = seg_inference("salstm", checkpoints, tmp_path, path)
    shape = (*volume.shape, 2)
    assert_refused(result, f"error: ValueError: {path}: expected a 3D single-channel volume, got shape {shape}.")


def test_a_volume_without_voxels_is_refused(hippocampus_case, checkpoints, tmp_path):
    _, affine = real_volume(hippocampus_case)
    path = tmp_path / "no_slices.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((0, 52, 38), np.float32), affine), path)
    result = seg_inference("mam_swinunetr", checkpoints, tmp_path, path)
    assert_refused(result, f"error: ValueError: {path}: has no voxels (spatial shape (0, 52, 38)).")


def test_truncated_nifti_is_refused_although_simpleitk_would_read_it(hippocampus_case, checkpoints, tmp_path):
    real = hippocampus_case["image"].read_bytes()
    path = tmp_path / "cut_off.nii.gz"
    path.write_bytes(real[: len(real) // 2])
    result = seg_inference("salstm", checkpoints, tmp_path, path)
    assert_refused(
        result,
        f"error: ValueError: {path}: cannot be read as an image (EOFError: Compressed file ended before the "
        "end-of-stream marker was reached).",
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [(0.0, "it is singular (all zero, or a zero voxel spacing)"), (float("nan"), "it holds NaN or infinite values")],
    ids=["all_zero", "nan"],
)
def test_a_broken_affine_is_refused(hippocampus_case, checkpoints, tmp_path, value, why):
    volume, _ = real_volume(hippocampus_case)
    path = with_broken_affine(tmp_path / "lost_geometry.nii.gz", volume, value)
    result = seg_inference("mam_swinunetr", checkpoints, tmp_path, path)
    assert_refused(
        result,
        f"error: ValueError: {path}: has a broken affine (voxel-to-world matrix): {why}; fix the header's geometry.",
    )


# ---------------------------------------------------------------------------------------------------------------
# labelled pairs (evaluation reads image and label)


def test_a_label_map_with_unknown_labels_names_the_label_file_and_the_values(hippocampus_case, checkpoints, tmp_path):
    label = nib.load(hippocampus_case["label"])
    values = np.asarray(label.dataobj)
    unknown = np.where(values == 2, 5, values).astype(np.uint8)  # class 2 written as 5
    folder = decathlon_folder(tmp_path / "task", hippocampus_case["image"], unknown, label.affine)
    result = bundle_run(
        "mam_swinunetr", "--dataset_dir", str(folder), "--validate#split", "all",
        "--ckpt_dir", str(checkpoints["mam_swinunetr"]), "--output_dir", str(tmp_path / "out"),
        configs=("train", "evaluate"), workflow="evaluating",
    )  # fmt: skip
    assert_refused(
        result,
        f"error: ValueError: {folder / 'labelsTr' / 'case.nii.gz'}: label values [5.0] are outside the declared "
        "classes 0..2.",
    )


def test_an_image_label_pair_of_different_shapes_names_both_files(hippocampus_case, checkpoints, tmp_path):
    label = nib.load(hippocampus_case["label"])
    values = np.asarray(label.dataobj)
    folder = decathlon_folder(tmp_path / "task", hippocampus_case["image"], values[:-4], label.affine)
    result = bundle_run(
        "salstm", "--dataset_dir", str(folder), "--validate#split", "all",
        "--ckpt_dir", str(checkpoints["salstm"]), "--output_dir", str(tmp_path / "out"),
        configs=("train", "evaluate"), workflow="evaluating",
    )  # fmt: skip
    image_shape = (1, *values.shape)
    label_shape = (1, values.shape[0] - 4, *values.shape[1:])
    assert_refused(
        result,
        f"error: ValueError: {folder / 'labelsTr' / 'case.nii.gz'}: label shape {label_shape} does not match image "
        f"{folder / 'imagesTr' / 'case.nii.gz'} shape {image_shape} (expected one channel and the same spatial shape).",
    )


# ---------------------------------------------------------------------------------------------------------------
# folders


def test_an_empty_folder_is_refused_naming_it_and_the_file_types(checkpoints, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    result = seg_inference("mam_unetr", checkpoints, tmp_path, folder)
    assert_refused(
        result,
        f"error: FileNotFoundError: no readable 2D image (.png, .tif, .tiff, .gif, .jpg, .jpeg, .bmp) in {folder}.",
    )


def test_folder_inference_skips_the_bad_volume_by_name_and_segments_the_others(
    hippocampus_dir, hippocampus_case, checkpoints, tmp_path
):
    folder = tmp_path / "volumes"
    folder.mkdir()
    entries = json.loads((hippocampus_dir / "dataset.json").read_text())["training"][:2]
    good = [hippocampus_dir / entry["image"] for entry in entries]
    for path in good:
        shutil.copy(path, folder)
    volume, affine = real_volume(hippocampus_case)
    volume[3, 4, 5] = np.nan
    bad = folder / "with_nan.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), bad)
    out = tmp_path / "out"
    result = bundle_run("mam_swinunetr", "--ckpt_dir", str(checkpoints["mam_swinunetr"]), "--output_dir", str(out),
                        "--input_dir", str(folder))  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    written = sorted(p.name for p in out.glob("*_seg.nii.gz"))
    assert written == sorted(p.name.replace(".nii.gz", "_seg.nii.gz") for p in good)
    warning = f"skipping {bad}: 1 of {volume.size} voxels are NaN or infinite (the first at index (3, 4, 5))"
    assert warning in result.output
    assert f"skipped 1 of 3 files in {folder}" in result.output


# ---------------------------------------------------------------------------------------------------------------
# settings


def test_a_batch_size_that_is_not_a_number_is_refused_naming_the_key(medmnist_dir, checkpoints, tmp_path):
    folder = small_medmnist(medmnist_dir, tmp_path / "medmnist")
    result = lmttm_inference(folder, checkpoints, tmp_path, "--batch_size", "abc")
    assert_refused(result, "error: ValueError: batch_size should be a positive integer value, but got batch_size=abc")


@pytest.mark.parametrize(("key", "value", "shown"), [("epochs", "1.5", "1.5"), ("epochs", "abc", "'abc'"),
                                                   ("epoch_length", "0", "0"), ("val_interval", "-1", "-1")])  # fmt: skip
def test_a_training_schedule_that_is_not_a_whole_number_is_refused_naming_the_key(medmnist_dir, tmp_path, key, value,
                                                                                  shown):  # fmt: skip
    result = bundle_run("lmttm", "--dataset_dir", str(medmnist_dir), f"--{key}", value, "--ckpt_dir",
                        str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), configs=("train",),
                        workflow="training")  # fmt: skip
    also = " (or null: the whole data set)" if key == "epoch_length" else ""
    assert_refused(result, f"error: {key} must be a positive whole number{also}, got {shown}.")
    assert not (tmp_path / "models").exists()  # refused before anything was written


def test_a_val_interval_beyond_the_epochs_is_refused_since_no_model_would_be_kept(drive_dir, tmp_path):
    # validating every 4 epochs, a 1-epoch run would train and then keep no model.pt (mam_unetr's default interval,
    # 4, follows epochs when fewer; given explicitly it is refused)
    result = bundle_run("mam_unetr", "--dataset_dir", str(drive_dir), "--epochs", "1", "--val_interval", "4", "--ckpt_dir",
                        str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), configs=("train",),
                        workflow="training")  # fmt: skip
    assert_refused(
        result,
        "error: val_interval 4 is more than epochs 1: no validation would run and no model.pt would be kept; "
        "pass --val_interval 1 or less.",
    )
    assert not (tmp_path / "models").exists()


def test_a_max_voxels_that_is_not_a_number_is_refused_naming_the_key(hippocampus_case, checkpoints, tmp_path):
    result = seg_inference("salstm", checkpoints, tmp_path, hippocampus_case["image"], "--max_voxels", "abc")
    assert_refused(
        result,
        "error: ValueError: max_voxels must be a positive whole number of voxels (or null for no limit), got 'abc'.",
    )


def test_an_unknown_override_key_is_refused_by_the_cli(tmp_path):
    result = run(str(CLI), "train", "lmttm", "--bogus", "1", "--output_dir", str(tmp_path / "run"))
    assert result.returncode == 1, result.output[-3000:]
    assert result.last_line.startswith("lmttm-monai: error: unknown override key 'bogus'; this bundle's keys are: ")
    assert "epochs" in result.last_line and not (tmp_path / "run").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------------------------
# checkpoints (lmttm inference with --ckpt_dir)


def lmttm_network(**changes) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS["lmttm"] / "inference.json"))
    for key, value in changes.items():
        parser[f"network_def#{key}"] = value
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module")
def tiny_medmnist(medmnist_dir, tmp_path_factory) -> Path:
    return small_medmnist(medmnist_dir, tmp_path_factory.mktemp("medmnist"))


def test_a_checkpoint_of_another_network_is_refused_with_counts_and_examples(tiny_medmnist, checkpoints, tmp_path):
    result = bundle_run("lmttm", "--dataset_dir", str(tiny_medmnist), "--ckpt_dir", str(checkpoints["mam_unetr"]),
                        "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert_refused(
        result,
        f"error: {checkpoints['mam_unetr'] / 'model.pt'} does not fit the network LMTTM: 194 of its 194 tensors are "
        "not in the network (e.g. 'vit.patch_embedding.position_embeddings'); 37 of the network's 37 tensors are "
        "missing (e.g. 'tokenizer.conv.weight'). It was trained with another network or configuration: use the "
        "configs (and overlays) it was trained with, or train this one.",
    )


def test_a_checkpoint_of_another_width_is_refused_with_the_shapes(tiny_medmnist, tmp_path):
    ckpt = tmp_path / "dim64"
    ckpt.mkdir()
    torch.save(lmttm_network(dim=64).state_dict(), ckpt / "model.pt")  # the same class, half as wide
    result = bundle_run("lmttm", "--dataset_dir", str(tiny_medmnist), "--ckpt_dir", str(ckpt),
                        "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert_refused(
        result,
        f"error: {ckpt / 'model.pt'} does not fit the network LMTTM: 34 tensors have another shape (e.g. "
        "'tokenizer.conv.weight': (64, 1, 3, 3, 3) in the file, (128, 1, 3, 3, 3) in the network). It was trained "
        "with another network or configuration: use the configs (and overlays) it was trained with, or train this one.",
    )


def _whole_module(folder: Path) -> Path:
    torch.save(lmttm_network(), folder / "model.pt")  # the module object, not its state dict: needs pickle code
    return folder / "model.pt"


def _truncated(folder: Path) -> Path:
    buffer = folder / "full.pt"
    torch.save(lmttm_network().state_dict(), buffer)
    data = buffer.read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])
    return folder / "model.pt"


def _a_list(folder: Path) -> Path:
    torch.save(list(lmttm_network().state_dict().values()), folder / "model.pt")
    return folder / "model.pt"


def _training_state(folder: Path) -> Path:
    net = lmttm_network()
    state = {"trainer": {"epoch": 1}, "network": net.state_dict(), "optimizer": {}, "seed": 0}
    torch.save(state, folder / "model.pt")  # lmttm_monai.handlers.training_checkpoint's checkpoint.pt, given as model.pt
    return folder / "model.pt"


def _missing(folder: Path) -> Path:
    return folder / "model.pt"


BAD_CHECKPOINTS = [
    (_whole_module,
     "{path} holds a pickled lmttm_monai.networks.nets.token_turing_machine.LMTTM, not only weights, and loading it "
     "would need pickle code: checkpoints are loaded with torch.load(weights_only=True), which refuses to run code "
     "from a file. If you trust where it came from, re-save only its weights: torch.save(torch.load(path, "
     "weights_only=False).state_dict(), 'model.pt') for a saved module."),
    (_truncated,
     "{path} is not a readable PyTorch checkpoint (RuntimeError: PytorchStreamReader failed reading zip archive: "
     "failed finding central directory); it is damaged or not a checkpoint: copy it again, or train again."),
    (_a_list,
     "{path} holds a list, not a state dict of the network's weights; save it with torch.save(model.state_dict(), "
     "'model.pt')."),
    (_training_state,
     "{path} is a full training checkpoint (network, optimizer, trainer), not a model's weights: give the model.pt "
     "next to it, or torch.save(checkpoint['network'], 'model.pt')."),
    (_missing,
     "{path}: no checkpoint there; train the bundle first, or point --ckpt_dir to the folder that holds its model.pt."),
]  # fmt: skip


@pytest.mark.parametrize(("make", "line"), BAD_CHECKPOINTS, ids=[m.__name__.strip("_") for m, _ in BAD_CHECKPOINTS])
def test_a_checkpoint_that_cannot_be_loaded_says_why_and_what_to_do(tiny_medmnist, tmp_path, make, line):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    path = make(ckpt)
    result = bundle_run("lmttm", "--dataset_dir", str(tiny_medmnist), "--ckpt_dir", str(ckpt),
                        "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert_refused(result, "error: " + line.format(path=path))


def test_a_checkpoint_that_fits_still_loads(tiny_medmnist, checkpoints, tmp_path):
    result = bundle_run("lmttm", "--dataset_dir", str(tiny_medmnist), "--ckpt_dir", str(checkpoints["lmttm"]),
                        "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    assert f"Restored all variables from {checkpoints['lmttm'] / 'model.pt'}" in result.output
    assert len((tmp_path / "out" / "predictions.csv").read_text().splitlines()) == 3  # header and the 2 volumes


# ---------------------------------------------------------------------------------------------------------------
# volumes far larger than the training crops


def too_large(path: Path, shape: tuple[int, ...]) -> str:
    return (
        f"error: ValueError: {path}: {' x '.join(map(str, shape))} = {math.prod(shape)} voxels is more than this "
        f"bundle's max_voxels ({MAX_VOXELS}); crop it to the region to segment, or raise the limit with --max_voxels N "
        "(inference memory grows with the number of voxels)."
    )


def refusal_baseline(bundle: str, checkpoints: dict[str, Path], tmp_path: Path) -> Run:
    """The same bundle refusing an input path that does not exist: what a run uses before it reads any image."""
    missing = tmp_path / "no_such_scan.nii"
    result = seg_inference(bundle, checkpoints, tmp_path, missing)
    assert_refused(
        result, f"error: FileNotFoundError: inference input {missing} does not exist (give a folder or one image file)."
    )
    return result


@pytest.mark.parametrize("bundle", ["mam_swinunetr", "salstm"])
def test_a_whole_body_ct_is_refused_before_it_is_read(bundle, checkpoints, tmp_path):
    shape = (512, 512, 300)
    path = sparse_nifti(tmp_path / "whole_body_ct.nii", shape)
    result = seg_inference(bundle, checkpoints, tmp_path, path)
    assert_refused(result, too_large(path, shape))
    baseline = refusal_baseline(bundle, checkpoints, tmp_path)
    # the header was read, not the 315 MB of voxels (reading them alone would add that much)
    assert result.max_rss_kb < baseline.max_rss_kb + REFUSAL_MARGIN_KB, (result.max_rss_kb, baseline.max_rss_kb)
    print(f"{bundle} refusing {shape}: peak RSS {result.max_rss_kb} kB, {baseline.max_rss_kb} kB for no file")


def test_a_very_large_picture_is_refused_before_it_is_decoded(checkpoints, tmp_path):
    path = tmp_path / "scan_8000.png"
    Image.new("RGB", (8000, 8000)).save(path)
    result = seg_inference("mam_unetr", checkpoints, tmp_path, path)
    assert_refused(result, too_large(path, (8000, 8000)))
    baseline = refusal_baseline("mam_unetr", checkpoints, tmp_path)
    # the size came from the PNG header: decoding it alone would add 192 MB of RGB bytes
    assert result.max_rss_kb < baseline.max_rss_kb + REFUSAL_MARGIN_KB, (result.max_rss_kb, baseline.max_rss_kb)
    print(f"mam_unetr refusing 8000 x 8000: peak RSS {result.max_rss_kb} kB, {baseline.max_rss_kb} kB for no file")
