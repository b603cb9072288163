"""Helpers for the model-zoo style bundle tests: run a ``ConfigWorkflow`` as model-zoo's CI does, run a bundle's
``multi_gpu_train.json`` under ``torchrun``, and write small synthetic data sets in each bundle's data layout.

model-zoo's ``ci/unit_tests/utils.py`` is not importable here (this repository has no copy of it), so the two
workflow helpers are written again; each docstring names the model-zoo function it mirrors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

__all__ = [
    "check_workflow",
    "run_torchrun_train",
    "write_decathlon_task",
    "write_drive",
    "write_medmnist_npz",
]


def check_workflow(workflow: ConfigWorkflow, check_properties: bool = True) -> None:
    """Initialize ``workflow``, check its properties, run it and finalize it.

    Mirrors ``check_workflow`` in model-zoo's ``ci/unit_tests/utils.py``: with ``check_properties`` the list returned
    by ``ConfigWorkflow.check_properties()`` (required properties that are missing, and optional ones defined under
    a wrong config ID) must be empty; the test fails with that list otherwise.
    """
    workflow.initialize()
    if check_properties:
        missing = workflow.check_properties()
        kind = workflow.workflow_type
        assert missing == [], f"the bundle lacks these {kind} properties (or has them under a wrong ID): {missing}"
    workflow.run()
    workflow.finalize()


def run_torchrun_train(
    config_files: Sequence[str | os.PathLike],
    meta_file: str | os.PathLike,
    logging_file: str | os.PathLike,
    overrides: dict,
    output_path: str | os.PathLike,
    nproc: int = 2,
) -> str:
    """Merge ``config_files`` with ``overrides``, export the result to ``output_path`` and run it under torchrun.

    Mirrors ``export_config_and_run_mgpu_cmd`` in model-zoo's ``ci/unit_tests/utils.py`` (with its
    ``export_overrided_config`` and ``produce_mgpu_cmd``): ``ConfigParser`` reads the files left to right, takes the
    overrides, and is exported with ``indent=4``; then ``torchrun --standalone --nnodes=1 --nproc_per_node=NPROC -m
    monai.bundle run --config_file OUT --meta_file META --logging_file LOG`` runs in a subprocess. torchrun is
    started as ``sys.executable -m torch.distributed.run`` so the interpreter running the tests (its environment's
    torch and lmttm_monai) is the one used, with ``OMP_NUM_THREADS=1`` so the processes do not fight over the cores.
    The run happens in ``bundle_root`` when the overrides give one. Fails the test, with the tail of the output, on a
    non-zero exit; returns the output.
    """
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser.update(pairs=overrides)
    ConfigParser.export_config_file(parser.config, str(output_path), indent=4)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}",
        "-m", "monai.bundle", "run", "--config_file", str(output_path), "--meta_file", str(meta_file),
        "--logging_file", str(logging_file),
    ]  # fmt: skip
    result = subprocess.run(
        cmd,
        cwd=str(overrides.get("bundle_root", Path(output_path).parent)),
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"torchrun exited with {result.returncode}:\n{output[-8000:]}"
    return output


def write_medmnist_npz(
    folder: str | os.PathLike, name: str = "adrenalmnist3d", size: int = 28, n: Sequence[int] = (8, 4, 4)
) -> Path:
    """A MedMNIST 3D ``.npz`` file with ``n`` = (train, val, test) random volumes, named as medmnist names it.

    Arrays use medmnist's keys (``train_images`` ``[N, S, S, S]`` uint8, ``train_labels`` ``[N, 1]`` uint8, and the
    same for ``val`` and ``test``); labels alternate 0, 1 so every split with two or more volumes has both classes
    (an AUC needs them). The file is ``{name}.npz`` for 28^3 and ``{name}_{size}.npz`` otherwise. Returns its path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(count, size, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).astype(np.uint8).reshape(count, 1)
    path = folder / (f"{name}.npz" if size == 28 else f"{name}_{size}.npz")
    np.savez_compressed(path, **arrays)
    return path


def write_decathlon_task(folder: str | os.PathLike, n_cases: int = 10, shape: Sequence[int] = (36, 48, 36)) -> Path:
    """A Medical Segmentation Decathlon task folder shaped like Task04_Hippocampus, with ``n_cases`` random cases.

    ``dataset.json`` holds the ``training`` list of ``{"image": "./imagesTr/hippocampus_XXX.nii.gz", "label":
    "./labelsTr/hippocampus_XXX.nii.gz"}``, ``labels`` (0 background, 1 Anterior, 2 Posterior) and ``modality``
    (0 MRI). Images are float32 noise with brighter structures, labels hold 0/1/2 with all three present, on a 1 mm
    grid (identity affine). ``lmttm_monai.data.decathlon_datalist`` splits 80/10/10, so 10 cases give 8/1/1 and 20
    give 16/2/2 (two processes need at least one validation case each). Returns the folder.
    """
    folder = Path(folder)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shape = tuple(int(s) for s in shape)
    training = []
    for i in range(n_cases):
        label = np.zeros(shape, np.uint8)
        lo = [s // 4 + int(rng.integers(0, 3)) for s in shape]
        mid = [s // 2 for s in shape]
        hi = [3 * s // 4 - int(rng.integers(0, 3)) for s in shape]
        label[lo[0] : hi[0], lo[1] : mid[1], lo[2] : hi[2]] = 1  # anterior
        label[lo[0] : hi[0], mid[1] : hi[1], lo[2] : hi[2]] = 2  # posterior
        image = (rng.normal(100.0, 20.0, shape) + 40.0 * label).astype(np.float32)
        name = f"hippocampus_{i + 1:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    dataset = {
        "name": "Hippocampus (synthetic)",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": n_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return folder


def write_drive(folder: str | os.PathLike, n_train: int = 4, n_test: int = 2, size: Sequence[int] = (96, 96)) -> Path:
    """A DRIVE folder with ``n_train`` training and ``n_test`` test cases of ``size`` (height, width) pixels.

    The layout and names are DRIVE's: ``training/images/NN_training.tif`` (RGB), ``training/1st_manual/
    NN_manual1.gif`` (vessels 0/255), ``training/mask/NN_training_mask.gif`` (field of view 0/255) for cases 21, 22,
    ..., and ``test/images/NN_test.tif``, ``test/1st_manual/NN_manual1.gif``, ``test/mask/NN_test_mask.gif`` for
    cases 01, 02, .... The GIFs are written without palette optimisation so they open as greyscale ``L`` pictures,
    as DRIVE's do. ``drive_datalist`` holds the last ``val_cases`` training cases out for validation, so
    ``val_cases`` must be below ``n_train``. Returns the folder.
    """
    folder = Path(folder)
    rng = np.random.default_rng(0)
    height, width = (int(s) for s in size)
    yy, xx = np.mgrid[:height, :width]
    fov = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= (0.45 * min(height, width)) ** 2).astype(np.uint8) * 255
    for part, suffix, first, count in (("training", "training", 21, n_train), ("test", "test", 1, n_test)):
        for sub in ("images", "1st_manual", "mask"):
            (folder / part / sub).mkdir(parents=True, exist_ok=True)
        for case in range(first, first + count):
            vessels = np.zeros((height, width), np.uint8)
            for _ in range(4):  # a few straight vessels of random direction, 2-3 pixels wide
                y0, x0 = rng.integers(0, height), rng.integers(0, width)
                angle = rng.uniform(0, np.pi)
                distance = np.abs((yy - y0) * np.cos(angle) - (xx - x0) * np.sin(angle))
                vessels[distance < rng.uniform(1.0, 1.5)] = 255
            vessels[fov == 0] = 0
            image = rng.integers(0, 60, size=(height, width, 3)).astype(np.uint8)
            image[..., 0] = np.where(fov > 0, 150, 0) + image[..., 0]
            image[..., 1] = np.where(vessels > 0, 20, 90) * (fov > 0) + image[..., 1]
            Image.fromarray(image, "RGB").save(folder / part / "images" / f"{case:02d}_{suffix}.tif")
            Image.fromarray(vessels, "L").save(folder / part / "1st_manual" / f"{case:02d}_manual1.gif", optimize=False)
            Image.fromarray(fov, "L").save(folder / part / "mask" / f"{case:02d}_{suffix}_mask.gif", optimize=False)
    return folder
