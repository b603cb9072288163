"""The ``lmttm-monai`` command line and the one-line errors of bundle runs (``lmttm-monai`` and
``python -m monai.bundle``). The command line's own checks run in this process through its entry function (fast
tier); bundle runs, and one proof that the console script ends a mistake with one line, run as a user runs them:
the installed console script in a subprocess (slow tier)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bundle_helpers import run_module
from conftest import REPO_ROOT

CLI = Path(sys.executable).parent / "lmttm-monai"  # the console script pip installed next to this interpreter
LMTTM_TRAIN = str(REPO_ROOT / "bundles" / "lmttm" / "configs" / "train.json")
QUICK = ["--epochs", "1", "--batch_size", "8", "--num_workers", "0", "--epoch_length", "2"]


def cli(*args: str, cwd: Path = REPO_ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900
    )


def last_line(result: subprocess.CompletedProcess) -> str:
    """The last line a run wrote to stdout: the summary (progress bars and logs go to stderr)."""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def last_stderr_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """``lmttm-monai ARGS`` through its entry function in this process: ``(exit status, stdout, stderr)``. The
    console script only calls it (test_the_console_script_says_a_mistake_on_one_line_last proves that path)."""
    from lmttm_monai.bundle.cli import main

    def run(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def last(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("command", ["list", "train", "evaluate", "infer", "export", "verify", "package", "download", "label"])
def test_every_command_has_help_with_an_example(command, run_cli):
    code, out, err = run_cli(command, "--help")
    assert code == 0, err
    assert "Example: lmttm-monai" in out + err  # fire writes help to stderr


def test_top_level_help_lists_the_commands(run_cli):
    code, out, err = run_cli("--help")
    assert code == 0
    for command in ("list", "train", "evaluate", "infer", "export", "verify", "package", "download"):
        assert command in out + err


def test_list_names_every_network_and_bundle(run_cli):
    code, out, err = run_cli("list")
    assert code == 0, err
    for name in ("lmttm", "ttm", "memory_unetr", "memory_swin_unetr", "salstm_unet", "mam_swinunetr", "mam_unetr"):
        assert name in out


def test_unknown_command_is_rejected_with_the_valid_ones(run_cli):
    code, _, err = run_cli("trian", "lmttm")
    assert code == 2
    assert "unknown command 'trian' (did you mean train?)" in last(err) and "evaluate" in last(err)


def test_unknown_bundle_is_rejected_with_the_known_ones(run_cli):
    code, _, err = run_cli("train", "lmtm")
    assert code == 1
    assert last(err).startswith("lmttm-monai: error: no bundle 'lmtm'") and "mam_swinunetr" in last(err)


def test_the_console_script_says_a_mistake_on_one_line_last():
    result = cli("train", "lmtm")
    assert result.returncode == 1
    assert last_stderr_line(result).startswith("lmttm-monai: error: no bundle 'lmtm'")
    assert "Traceback" not in result.stderr


def test_unknown_override_key_is_rejected_with_a_suggestion_and_the_valid_keys(tmp_path, run_cli):
    code, _, err = run_cli("train", "lmttm", "--epoch", "3", cwd=tmp_path)
    assert code == 1
    assert "unknown override key 'epoch' (did you mean epochs" in last(err) and "learning_rate" in last(err)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_a_flag_given_twice_is_refused_before_anything_is_written(tmp_path, run_cli):
    code, _, err = run_cli("train", "lmttm", "--epochs", "3", "--epochs=4", cwd=tmp_path)
    assert code == 1
    assert last(err).startswith("lmttm-monai: error: --epochs is given 2 times (3, 4) and only the last")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_train_evaluate_infer_each_write_their_own_run_folder_and_say_where(medmnist_dir, tmp_path):
    data = ["--dataset_dir", str(medmnist_dir)]
    train = cli("train", "lmttm", *data, *QUICK, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    summary = last_line(train)
    assert summary.startswith("lmttm-monai train lmttm: 1 epochs, best val_auc 0.")
    (train_dir,) = (tmp_path / "runs" / "lmttm").glob("*-train")
    assert str(train_dir / "models" / "model.pt") in summary and (train_dir / "models" / "model.pt").is_file()
    assert json.loads((train_dir / "summary.json").read_text())["epochs"] == 1
    assert json.loads((train_dir / "config.json").read_text())["epochs"] == 1  # the config as run
    log = (train_dir / "log.txt").read_text()
    assert "Epoch[1] Complete" in log and "Epoch: 1/1, Iter: 2/2 -- train_loss" in log  # epoch_length 2
    assert "Iter: 3/" not in log and "100%" not in log  # the progress bar stays on the console

    # evaluation and inference take the latest training run's checkpoint by default, and say so
    evaluate = cli("evaluate", "lmttm", *data, "--num_workers", "0", cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert f"(weights {train_dir / 'models' / 'model.pt'})" in last_line(evaluate)
    assert "test_auc 0." in last_line(evaluate)
    (eval_dir,) = (tmp_path / "runs" / "lmttm").glob("*-evaluate")
    assert (eval_dir / "metrics.csv").is_file()

    out = tmp_path / "predictions"
    infer = cli("infer", "lmttm", *data, "--num_workers", "0", "--output_dir", str(out), cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert "298 inputs inferred" in last_line(infer)
    first = (out / "predictions.csv").read_bytes()
    # a second run into the same folder is refused unless asked, and the first run's output is intact
    again = cli("infer", "lmttm", *data, "--num_workers", "0", "--output_dir", str(out), cwd=tmp_path)
    assert again.returncode == 1 and "already holds an earlier run's outputs" in last_stderr_line(again)
    assert (out / "predictions.csv").read_bytes() == first
    overwrite = cli("infer", "lmttm", *data, "--num_workers", "0", "--output_dir", str(out), "--overwrite", cwd=tmp_path)
    assert overwrite.returncode == 0, overwrite.stderr[-3000:]


@pytest.mark.slow
def test_resume_continues_the_latest_train_run_in_its_own_folder_with_more_epochs(tmp_path, medmnist_dir):
    data = ["--dataset_dir", str(medmnist_dir)]
    first = cli("train", "lmttm", *data, *QUICK, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    longer = [("2" if previous == "--epochs" else arg) for previous, arg in zip(["", *QUICK], QUICK)]
    resumed = cli("train", "lmttm", *data, *longer, "--resume", "true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "lmttm").glob("*-train*")  # no second run folder
    assert last_line(resumed).startswith("lmttm-monai train lmttm: 2 epochs") and str(run_dir) in last_line(resumed)
    log = (run_dir / "log.txt").read_text()
    assert "Epoch: 1/1, Iter: 2/2" in log and "resume: continuing after epoch 1 of 2" in log  # one log, both runs
    nothing = cli("train", "lmttm", *data, "--resume", "true", "--output_dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert nothing.returncode == 1
    assert last_stderr_line(nothing).endswith("checkpoint.pt does not exist, so there is nothing to resume")


def test_default_checkpoint_is_the_latest_finished_train_run_with_the_same_overlays(tmp_path, monkeypatch):
    from lmttm_monai.bundle import cli as cli_module

    monkeypatch.chdir(tmp_path)
    bundle = cli_module.find_bundle("lmttm")
    runs = tmp_path / "runs" / "lmttm"

    def finished_run(name: str, overlays: list[str], mtime: int, finished: bool = True) -> Path:
        models = runs / name / "models"
        models.mkdir(parents=True)
        (models / "model.pt").write_bytes(b"weights")
        os.utime(models / "model.pt", (mtime, mtime))
        if finished:
            (runs / name / "summary.json").write_text(json.dumps({"overlays": overlays}))
        return models

    assert cli_module._latest_checkpoint(bundle) == bundle / "models"  # no run yet: the bundle's own weights
    lmttm = finished_run("20261201-100000-train", [], 100)
    ttm = finished_run("20261201-110000-train", ["ttm.json"], 200)
    finished_run("20261201-120000-train", [], 300, finished=False)  # killed: no summary, not used
    assert cli_module._latest_checkpoint(bundle) == lmttm.resolve()
    assert cli_module._latest_checkpoint(bundle, ["ttm.json"]) == ttm.resolve()
    assert cli_module._overlay_names("evaluate", ["a/train.json", "a/evaluate.json", "a/ttm.json"]) == ["ttm.json"]


def write_corrupt_npz(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adrenalmnist3d.npz").write_bytes(b"PK\x03\x04 this is not a whole zip file")
    return folder


def write_small_npz(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    np.savez(folder / "adrenalmnist3d.npz", **arrays)
    return folder


# (name, arguments after the config, text the last line must hold); the data folders are made in tmp_path
MISTAKES = [
    ("corrupt_npz", ["--dataset_dir", "{corrupt}"], "is not a readable MedMNIST .npz file"),
    ("unknown_dataset", ["--dataset_dir", "{small}", "--dataset_name", "pathmnist"], "unknown MedMNIST 3D dataset 'pathmnist'"),
    ("wrong_image_size", ["--dataset_dir", "{small}", "--image_size", "32"], "size must be one of (28, 64)"),
    ("missing_file", ["--dataset_dir", "{small}", "--dataset_name", "nodulemnist3d"], "nodulemnist3d.npz does not exist"),
    ("batch_size_zero", ["--dataset_dir", "{small}", "--batch_size", "0"], "batch_size should be a positive integer"),
]  # fmt: skip


def _mistake_args(args: list[str], tmp_path: Path) -> list[str]:
    folders = {"corrupt": write_corrupt_npz(tmp_path / "corrupt"), "small": write_small_npz(tmp_path / "small")}
    return [a.format(**folders) for a in args]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "args", "expected"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_bundle_mistake_ends_with_the_projects_own_message_through_monai_bundle(tmp_path, case, args, expected):
    # nodulemnist3d is missing and cannot be downloaded: keep the download from trying the internet
    url_env = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    result = run_module("run", "training", "--config_file", LMTTM_TRAIN, *_mistake_args(args, tmp_path), *QUICK[:2],
                        cwd=tmp_path, env=url_env)  # fmt: skip
    assert result.returncode != 0
    line = last_stderr_line(result)
    assert line.startswith("error: ") and expected in line, result.stderr[-3000:]
    assert "Traceback" not in result.stderr  # the wrapper's traceback is not shown ...
    debug = run_module("run", "training", "--config_file", LMTTM_TRAIN, *_mistake_args(args, tmp_path), *QUICK[:2],
                       cwd=tmp_path, env={**url_env, "LMTTM_DEBUG": "1"})  # fmt: skip
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # ... unless asked for


@pytest.mark.slow
@pytest.mark.parametrize(("case", "args", "expected"), MISTAKES[:3], ids=[m[0] for m in MISTAKES[:3]])
def test_bundle_mistake_ends_with_the_projects_own_message_through_the_cli(tmp_path, case, args, expected):
    result = cli("train", "lmttm", *_mistake_args(args, tmp_path), *QUICK[:2], cwd=tmp_path)
    assert result.returncode == 1
    line = last_stderr_line(result)
    assert line.startswith("lmttm-monai: error: ") and expected in line, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    debug = cli("train", "lmttm", *_mistake_args(args, tmp_path), *QUICK[:2], "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_a_failed_download_ends_with_what_to_do_and_leaves_no_empty_data_folder(tmp_path):
    absent = tmp_path / "data" / "medmnist"
    result = run_module("run", "training", "--config_file", LMTTM_TRAIN, "--dataset_dir", str(absent), *QUICK[:2],
                        cwd=tmp_path, env={"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"})  # fmt: skip
    assert result.returncode != 0
    line = last_stderr_line(result)
    assert line.startswith(f"error: FileNotFoundError: {absent / 'adrenalmnist3d.npz'} does not exist and downloading")
    assert line.endswith("or point dataset_dir (bundle override --dataset_dir) to the folder that holds it.")
    assert not (tmp_path / "data").exists()  # the folders the download attempt made are gone


@pytest.mark.slow
def test_segmentation_bundle_without_its_data_says_which_file_is_missing(tmp_path):
    config = str(REPO_ROOT / "bundles" / "mam_swinunetr" / "configs" / "train.json")
    result = run_module("run", "training", "--config_file", config, "--dataset_dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0
    line = last_stderr_line(result)
    assert line.startswith("error: ") and str(tmp_path / "dataset.json") in line, result.stderr[-3000:]


@pytest.mark.slow
def test_bundle_runs_hide_deprecation_notices_unless_debugging():
    code = (
        "import warnings, lmttm_monai.utils.readable_errors\n"
        "warnings.warn('an internal deprecation', DeprecationWarning)\n"
        "warnings.warn('a warning for the user', UserWarning)\n"
    )
    quiet = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True)
    assert "a warning for the user" in quiet.stderr and "an internal deprecation" not in quiet.stderr
    debug = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                           env={**os.environ, "LMTTM_DEBUG": "1"})  # fmt: skip
    assert "an internal deprecation" in debug.stderr


@pytest.mark.slow
def test_label_command_prints_the_monai_label_start_command_and_serve_says_what_it_needs(tmp_path):
    from lmttm_monai.apps.monailabel import APP_DIR

    printed = cli("label", "command", "--studies", str(tmp_path), "--models", "lmttm,salstm", "--python", "/opt/py")
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert last_line(printed) == (f"/opt/py -m monailabel.main start_server --app {APP_DIR} --studies {tmp_path} "
                                  "--conf models lmttm,salstm")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "LMTTM_LABEL_PYTHON"}
    missing = subprocess.run([str(CLI), "label", "serve", "--studies", str(tmp_path)], capture_output=True, text=True,
                             env=env, timeout=120)  # fmt: skip
    assert missing.returncode == 1
    assert last_stderr_line(missing).startswith("lmttm-monai: error: MONAI Label's interpreter is not set: build its")


@pytest.mark.slow
def test_a_failed_run_leaves_no_folder_and_a_failed_overwrite_leaves_the_earlier_run_as_it_was(tmp_path, hippocampus_dir):
    def case(number: str) -> str:
        return str(hippocampus_dir / "imagesTr" / f"hippocampus_{number}.nii.gz")

    missing = str(tmp_path / "missing.nii.gz")
    failed = cli("infer", "salstm", "--input", missing, cwd=tmp_path)
    assert failed.returncode == 1 and "does not exist" in last_stderr_line(failed)
    assert not (tmp_path / "runs").exists()  # no empty run folder, no runs/salstm made for it

    out = tmp_path / "out"
    assert cli("infer", "salstm", "--input", case("331"), "--output_dir", str(out), cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "hippocampus_331_seg.nii.gz" in before
    failed = cli("infer", "salstm", "--input", missing, "--output_dir", str(out), "--overwrite", cwd=tmp_path)
    assert failed.returncode == 1 and "does not exist" in last_stderr_line(failed)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not one file of the earlier run touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nor a half-run folder left beside it

    replaced = cli("infer", "salstm", "--input", case("180"), "--output_dir", str(out), "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0 and f"outputs in {out} " in last_line(replaced)
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == ["hippocampus_180_seg.nii.gz"]  # one run's files
    config = json.loads((out / "config.json").read_text())
    assert config["output_dir"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_an_error_that_ends_a_run_is_said_once(tmp_path, hippocampus_dir):
    image = str(hippocampus_dir / "imagesTr" / "hippocampus_331.nii.gz")
    result = cli("infer", "salstm", "--input", image, "--ckpt_dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 1 and "no checkpoint there" in last_stderr_line(result)
    assert (result.stdout + result.stderr).count("no checkpoint there") == 1


@pytest.mark.slow
def test_label_serve_refuses_a_decathlon_folder_naming_its_imagestr_and_a_folder_without_images(tmp_path, hippocampus_dir):
    # MONAI Label serves the images at the top of --studies only: these would start a server with nothing to serve
    python = ["--python", sys.executable]
    decathlon = cli("label", "serve", "--studies", str(hippocampus_dir), *python)
    assert decathlon.returncode == 1
    assert last_stderr_line(decathlon) == (
        f"lmttm-monai: error: --studies {hippocampus_dir} holds no image at its top but 200 in imagesTr/ (a Decathlon "
        f"task folder; MONAI Label serves only the top): pass --studies {hippocampus_dir / 'imagesTr'}"
    )
    (tmp_path / "notes.txt").write_text("not an image")
    empty = cli("label", "serve", "--studies", str(tmp_path), *python)
    assert empty.returncode == 1
    assert last_stderr_line(empty).startswith(f"lmttm-monai: error: --studies {tmp_path} holds no image MONAI Label serves")
