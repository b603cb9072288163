"""MONAI Label serving this project's bundles, tested against a real server over HTTP (docs/monailabel.md).

The server runs in its own environment (``.ci/label-install.sh VENV``), named by ``LMTTM_LABEL_PYTHON`` (that
environment's ``bin/python``). Without it these tests skip, or fail with ``LMTTM_REQUIRE_LABEL=1`` (CI's label
step). The requests are the ones 3D Slicer's MONAI Label plugin sends: ``GET /info/``, ``POST /infer/{model}``,
``PUT /datastore/label``, ``POST /train/{model}``, ``GET /train/``.

The server serves a temporary copy of the bundles with their shipped ``models/model.pt`` (the predictions of a
held-out Hippocampus case are checked against its label).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, SHIPPED_BUNDLES

from lmttm_monai.apps.monailabel import start_command

requests = pytest.importorskip("requests")

pytestmark = pytest.mark.slow

LABEL_PYTHON_ENV = "LMTTM_LABEL_PYTHON"
REQUIRE_ENV = "LMTTM_REQUIRE_LABEL"
# .ci/run builds the MONAI Label environment while the other tests run: it names the file that receives the
# build's exit status (its log beside it, same name with .log), and these tests wait for it
READY_ENV = "LMTTM_LABEL_READY"
INSTALL_TIMEOUT_S = 1800
BUNDLES = ("lmttm", "mam_swinunetr", "mam_unetr", "salstm")
UNTRAINED = "salstm_untrained"  # a bundle folder without models/model.pt
HIPPOCAMPUS_CASES = ("hippocampus_331", "hippocampus_180", "hippocampus_372")  # of the bundles' test split
ADRENAL = "adrenal_test_0"
DRIVE = "drive_21"
START_TIMEOUT_S = 240
TRAIN_TIMEOUT_S = 600
# uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal: the process ends by SIGINT after that
CLEAN_EXIT = (0, -signal.SIGINT)


def _wait_for_the_install() -> None:
    status = Path(os.environ[READY_ENV])
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    while not status.is_file() or not status.read_text().strip():
        if time.monotonic() > deadline:
            pytest.fail(f"the MONAI Label environment was not built within {INSTALL_TIMEOUT_S} s ({status} missing)")
        time.sleep(5)
    if status.read_text().strip() != "0":
        log = status.with_suffix(".log")
        tail = log.read_text()[-3000:] if log.is_file() else "(no log)"
        pytest.fail(f"building the MONAI Label environment failed (exit {status.read_text().strip()}):\n{tail}")


def _label_python() -> str:
    if os.environ.get(READY_ENV):
        _wait_for_the_install()
    python = os.environ.get(LABEL_PYTHON_ENV)
    if not python:
        message = (
            f"{LABEL_PYTHON_ENV} is not set: point it to the MONAI Label environment's python "
            "(bash .ci/label-install.sh VENV, then VENV/bin/python)"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message + f"; {REQUIRE_ENV}=1 forbids skipping")
        pytest.skip(message)
    if not os.access(python, os.X_OK):
        pytest.fail(f"{LABEL_PYTHON_ENV}={python} is not an executable python")
    return python


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    bundles: Path
    studies: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, **kwargs):
        return requests.get(self.url + path, timeout=120, **kwargs)

    def post(self, path: str, **kwargs):
        return requests.post(self.url + path, timeout=300, **kwargs)

    def put(self, path: str, **kwargs):
        return requests.put(self.url + path, timeout=120, **kwargs)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            # Ctrl-C: uvicorn's graceful shutdown (the app's shutdown hook runs)
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _start(python: str, root: Path, bundles: Path, studies: Path, models: str, name: str) -> Server:
    port = _free_port()
    log = root / f"{name}.log"
    argv = start_command(studies, models, bundles, "127.0.0.1", port, launcher=(python, "-m", "monailabel.main"))
    with open(log, "w") as out:
        process = subprocess.Popen(argv, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    return Server(f"http://127.0.0.1:{port}", process, log, bundles, studies)


def _wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited ({server.process.returncode}) while starting:\n{server.log_text()[-6000:]}")
        try:
            if requests.get(server.url + "/info/", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    server.stop()
    pytest.fail(f"/info/ did not answer within {START_TIMEOUT_S} s:\n{server.log_text()[-6000:]}")


@pytest.fixture(scope="module")
def label_python() -> str:
    return _label_python()


@pytest.fixture(scope="module")
def workspace(label_python, tmp_path_factory, hippocampus_dir, medmnist_dir, drive_dir):
    """A copy of the bundles with their shipped weights (and one without weights), and a studies folder of real
    images."""
    root = tmp_path_factory.mktemp("monailabel")
    bundles = root / "bundles"
    for name in BUNDLES:
        shutil.copytree(REPO_ROOT / "bundles" / name, bundles / name, ignore=shutil.ignore_patterns("models", "eval"))
        assert name in SHIPPED_BUNDLES, name
        (bundles / name / "models").mkdir()
        shutil.copy(REPO_ROOT / "bundles" / name / "models" / "model.pt", bundles / name / "models" / "model.pt")
    shutil.copytree(REPO_ROOT / "bundles" / "salstm", bundles / UNTRAINED, ignore=shutil.ignore_patterns("models"))

    studies = root / "studies"
    studies.mkdir()
    for case in HIPPOCAMPUS_CASES:
        shutil.copy(hippocampus_dir / "imagesTr" / f"{case}.nii.gz", studies / f"{case}.nii.gz")
    with np.load(medmnist_dir / "adrenalmnist3d.npz") as data:
        volume = data["test_images"][0]
    nib.save(nib.Nifti1Image(volume, np.eye(4)), studies / f"{ADRENAL}.nii.gz")
    shutil.copy(drive_dir / "training" / "images" / "21_training.tif", studies / f"{DRIVE}.tif")
    return root, bundles, studies


@pytest.fixture(scope="module")
def server(label_python, workspace):
    root, bundles, studies = workspace
    server = _start(label_python, root, bundles, studies, "all", "server")
    try:
        _wait_until_serving(server)
        yield server
    finally:
        server.stop()


def _label_volume(content: bytes, root: Path, name: str) -> nib.Nifti1Image:
    path = root / name
    path.write_bytes(content)
    return nib.load(path)


def _infer_label(server: Server, model: str, image: str) -> nib.Nifti1Image:
    response = server.post(f"/infer/{model}", params={"image": image, "output": "image"})
    assert response.status_code == 200, response.text
    return _label_volume(response.content, server.studies.parent, f"{model}_{image}_{time.monotonic_ns()}.nii.gz")


def _bundle_run_inference(bundle: Path, image: Path, output_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--bundle_root", str(bundle), "--input_dir", str(image), "--output_dir", str(output_dir)],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_info_lists_every_served_bundle_with_labels_type_and_dimension(server):
    info = server.get("/info/").json()
    models = info["models"]
    assert set(models) == set(BUNDLES)
    assert models["lmttm"]["type"] == "classification"
    assert models["lmttm"]["labels"] == {"normal": 0, "hyperplasia": 1}
    for name in ("mam_swinunetr", "salstm"):
        assert models[name]["type"] == "segmentation"
        assert models[name]["labels"] == {"anterior": 1, "posterior": 2}
        # salstm's network takes 2D slices, but it segments volumes: 3D Slicer must be told 3
        assert models[name]["dimension"] == 3
    assert models["mam_unetr"]["labels"] == {"vessel": 1}
    assert models["mam_unetr"]["dimension"] == 2
    # segmentation bundles train on the datastore's labels; the classifier has nothing there to train on
    assert set(info["trainers"]) == {"mam_swinunetr", "mam_unetr", "salstm", UNTRAINED}


def test_bundle_without_weights_is_reported_at_start_up_and_refused_for_inference(server):
    info = server.get("/info/").json()
    assert info["bundles"][UNTRAINED] == {
        "path": str((server.bundles / UNTRAINED).resolve()),
        "type": "segmentation",
        "weights": None,
        "infer": False,
        "train": True,
    }
    log = server.log_text()
    assert f"bundle {UNTRAINED} is NOT served for inference" in log
    assert "models/model.pt does not exist" in log
    response = server.post(f"/infer/{UNTRAINED}", params={"image": HIPPOCAMPUS_CASES[0]})
    assert response.status_code == 404
    assert "has no weights" in response.json()["detail"]


@pytest.mark.parametrize("model", ["mam_swinunetr", "salstm"])
def test_3d_segmentation_returns_label_map_with_the_image_shape_affine_and_known_labels(server, model):
    for case in HIPPOCAMPUS_CASES[:2]:
        image = nib.load(server.studies / f"{case}.nii.gz")
        label = _infer_label(server, model, case)
        assert label.shape == image.shape
        np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("model", ["mam_swinunetr", "salstm"])
def test_the_served_shipped_model_segments_a_held_out_hippocampus_case_as_its_label_does(server, model, hippocampus_dir):
    case = HIPPOCAMPUS_CASES[2]  # before the train test below fine-tunes mam_swinunetr
    label = np.asarray(_infer_label(server, model, case).dataobj)
    truth = np.asarray(nib.load(hippocampus_dir / "labelsTr" / f"{case}.nii.gz").dataobj)
    for value in (1, 2):  # an untrained network's output scores near 0
        a, b = label == value, truth == value
        assert 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()) > 0.75, (model, value)


def test_2d_segmentation_of_a_drive_image_returns_label_of_the_image_size(server):
    from PIL import Image

    response = server.post("/infer/mam_unetr", params={"image": DRIVE, "output": "image"})
    assert response.status_code == 200, response.text
    label = np.array(Image.open(io.BytesIO(response.content)))
    with Image.open(server.studies / f"{DRIVE}.tif") as image:
        width, height = image.size
    assert label.shape == (height, width)
    assert set(np.unique(label).tolist()) <= {0, 1}


def _bundle_run_probabilities(bundle: Path, image: Path, output_dir: Path) -> list[float]:
    _bundle_run_inference(bundle, image, output_dir)
    with open(output_dir / "predictions.csv") as f:
        (row,) = list(csv.DictReader(f))
    return [float(row["prob_normal"]), float(row["prob_hyperplasia"])]


@pytest.mark.parametrize(
    "image, resampled", [(ADRENAL, False), (HIPPOCAMPUS_CASES[0], True)], ids=["28cubed", "hippocampus_any_size"]
)
def test_lmttm_returns_the_probabilities_of_a_bundle_run_and_says_whether_it_resampled(
    server, tmp_path, image, resampled
):
    response = server.post("/infer/lmttm", params={"image": image, "output": "json"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert [p["label"] for p in result["prediction"]] == ["normal", "hyperplasia"]
    served = [p["score"] for p in result["prediction"]]

    expected = _bundle_run_probabilities(server.bundles / "lmttm", server.studies / f"{image}.nii.gz", tmp_path)
    np.testing.assert_allclose(served, expected, atol=1e-4)

    shape = list(nib.load(server.studies / f"{image}.nii.gz").shape)
    assert result["input_spatial_shape"] == shape
    assert result["model_input_size"] == [28, 28, 28]
    assert result["resampled"] is resampled
    if resampled:
        assert (
            f"resampled from {'x'.join(map(str, shape))} to the model's input size 28x28x28" in result["preprocessing"]
        )


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(server):
    cases = {
        "unknown model": server.post("/infer/no_such_model", params={"image": HIPPOCAMPUS_CASES[0]}),
        "unknown image": server.post("/infer/mam_swinunetr", params={"image": "no_such_image"}),
        "malformed upload": server.post(
            "/infer/mam_swinunetr", files={"file": ("scan.nii.gz", b"this is not a NIfTI file")}
        ),
        "2D image to a 3D bundle": server.post("/infer/mam_swinunetr", params={"image": DRIVE}),
        "label for unknown image": server.put(
            "/datastore/label", params={"image": "no_such_image"}, files={"label": ("x.nii.gz", b"not a label")}
        ),
        "malformed label": server.put(
            "/datastore/label", params={"image": HIPPOCAMPUS_CASES[0]}, files={"label": ("x.nii.gz", b"not a label")}
        ),
        "training an unknown model": server.post("/train/no_such_model", json={}),
    }
    expected_text = {
        "unknown model": "no model 'no_such_model'",
        "unknown image": "no image 'no_such_image'",
        "malformed upload": "cannot use the uploaded image",
        "2D image to a 3D bundle": "expected a 3D image",
        "label for unknown image": "no image 'no_such_image'",
        "malformed label": "is not an image file",
        "training an unknown model": "no model 'no_such_model'",
    }
    for case, response in cases.items():
        assert 400 <= response.status_code < 500, f"{case}: {response.status_code} {response.text}"
        assert expected_text[case] in response.json()["detail"], case
    assert not (server.studies / "labels" / "final" / f"{HIPPOCAMPUS_CASES[0]}.nii.gz").exists()

    label = _infer_label(server, "mam_swinunetr", HIPPOCAMPUS_CASES[0])
    assert label.shape == nib.load(server.studies / f"{HIPPOCAMPUS_CASES[0]}.nii.gz").shape


def _wait_for_training(server: Server) -> dict:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = server.get("/train/").json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(2)
    requests.delete(server.url + "/train/", timeout=60)  # stop it: the server must not train on
    pytest.fail(f"training did not finish within {TRAIN_TIMEOUT_S} s")


def test_stored_labels_train_a_new_checkpoint_that_inference_then_uses(server, hippocampus_dir, tmp_path):
    case = HIPPOCAMPUS_CASES[0]
    for name in HIPPOCAMPUS_CASES:
        with open(hippocampus_dir / "labelsTr" / f"{name}.nii.gz", "rb") as f:
            response = server.put(
                "/datastore/label", params={"image": name, "tag": "final"}, files={"label": (f"{name}.nii.gz", f)}
            )
        assert response.status_code == 200, response.text
        assert (server.studies / "labels" / "final" / f"{name}.nii.gz").is_file()
    datastore = server.get("/datastore/", params={"output": "stats"}).json()
    assert datastore["total"] == 5 and datastore["completed"] == 3

    weights = server.bundles / "mam_swinunetr" / "models" / "model.pt"
    before = torch.load(weights, map_location="cpu")
    label_before = np.asarray(_infer_label(server, "mam_swinunetr", case).dataobj)

    # a tiny budget: one epoch of one iteration; a large learning rate so that one step changes the predictions
    response = server.post(
        "/train/mam_swinunetr", json={"max_epochs": 1, "epoch_length": 1, "num_workers": 0, "learning_rate": 0.05}
    )
    assert response.status_code == 200, response.text
    status = _wait_for_training(server)
    assert status["status"] == "DONE", "\n".join(status.get("details", []))

    after = torch.load(weights, map_location="cpu")
    after = after.get("model", after)
    assert any(not torch.equal(before[k], after[k]) for k in before), "training did not write new weights"
    # the fine-tune started from the served (shipped) weights: MONAI's CheckpointLoader loaded them first
    assert f"Restored all variables from {weights}" in server.log_text()
    label_after = np.asarray(_infer_label(server, "mam_swinunetr", case).dataobj)
    assert not np.array_equal(label_after, label_before), "/infer did not pick up the new checkpoint"

    # what the server answers is what the bundle's own inference computes with the checkpoint on disk
    _bundle_run_inference(server.bundles / "mam_swinunetr", server.studies / f"{case}.nii.gz", tmp_path)
    (reference,) = tmp_path.glob(f"{case}_seg.*")
    agreement = np.mean(np.asarray(nib.load(reference).dataobj) == label_after)
    assert agreement > 0.999, f"server and bundle run agree on {agreement:.4%} of voxels"


def test_a_fine_tune_shorter_than_the_validation_interval_still_validates_and_ends_its_schedule(
    label_python, workspace
):
    # mam_unetr validates every 4 epochs; MONAI Label sets only the trainer's max_epochs, and without validation
    # no models/model.pt is written. Asked for 2 epochs, the bundle must validate every 2 and anneal over 2 (the
    # bundle's interval follows its epochs; the task also lowers an interval given as a number).
    _, bundles, _ = workspace
    script = f"""
import json
from pathlib import Path
from lmttm_monai.apps.monailabel.bundles import ServedBundle
from lmttm_monai.apps.monailabel.tasks import SegmentationBundleTrainTask
path = Path({str(bundles / "mam_unetr")!r})
task = SegmentationBundleTrainTask(ServedBundle("mam_unetr", path, "segmentation", None, True), {{}})
from monai.bundle import ConfigParser
for max_epochs in (2, 300):
    overrides = task._update_overrides({{task.const.key_train_trainer_max_epochs(): max_epochs}})
    parser = ConfigParser()
    parser.read_config(str(path / "configs" / "train.json"))
    parser.update(overrides)
    print(json.dumps({{**overrides, "resolved_val_interval": parser.get_parsed_content("val_interval")}}))
"""
    result = subprocess.run([label_python, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    short, long = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert (short["epochs"], short["resolved_val_interval"]) == (2, 2)
    assert long["epochs"] == 300 and long["resolved_val_interval"] == 4  # the bundle's own interval


def test_server_stops_cleanly_on_ctrl_c(server):
    assert server.stop() in CLEAN_EXIT
    log = server.log_text()
    assert "Application shutdown complete." in log
    assert "Finished server process" in log


def test_models_conf_picks_the_bundles_served_and_rejects_unknown_names(label_python, workspace):
    python = label_python
    root, bundles, studies = workspace
    picked = _start(python, root, bundles, studies, "lmttm,mam_swinunetr", "picked")
    try:
        _wait_until_serving(picked)
        info = picked.get("/info/").json()
        assert set(info["models"]) == {"lmttm", "mam_swinunetr"}
        assert set(info["trainers"]) == {"mam_swinunetr"}
    finally:
        assert picked.stop() in CLEAN_EXIT

    unknown = _start(python, root, bundles, studies, "lmttm,no_such_bundle", "unknown")
    try:
        returncode = unknown.process.wait(START_TIMEOUT_S)
    finally:
        unknown.stop()
    assert returncode != 0
    assert "--conf models names no_such_bundle, not a bundle" in unknown.log_text()
