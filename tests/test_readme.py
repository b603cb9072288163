"""The README's commands, run as a user would run them, in the order the README gives them.

Every command of every ``bash`` block of README.md runs in a copy of the repository's ``bundles/`` (so the models
and outputs the README's commands write land in a temporary folder, not in the checkout), with ``../shared``
beside it as in a checkout and ``HOME`` pointing to an empty folder. The commands fall into groups that do not
depend on each other (one bundle's ``monai.bundle`` runs, the ``lmttm-monai`` commands, the results, the release);
each group runs in its own copy, in the README's order, so that the groups can run side by side. Two things are changed, both stated here:
training, evaluation and inference get a one-epoch, two-iteration, few-case budget appended (the README's
commands are the full recipes), and the placeholder inputs (``path/to/volumes``, ``path/to/pictures``,
``path/to/volume.nii.gz``) are replaced by real files from ``../shared/data``. The commands that cannot run here
are listed in ``NOT_RUN`` with the reason; every other command must exit 0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO_ROOT

from lmttm_monai.utils.bundles import BUNDLES_ENV

README = REPO_ROOT / "README.md"

pytestmark = pytest.mark.slow

# commands that need what a CPU machine without internet does not have; each is covered elsewhere
NOT_RUN = {
    "pip install": "installs: .ci/run runs exactly the README's install (test_ci_installs_and_tests_as_the_readme_says)",
    "python3 -m venv": "part of the install, as above",
    "python -m pytest": "the test command itself, run by .ci/run",
    " download ": "downloads need GitHub or Hugging Face; tests/test_release.py downloads from a local HTTP server",
    "downloaded/": "runs a downloaded bundle, see the line above",
    "lmttm_monai.experiments.mam_cost": "a benchmark, measured and reported in the model card, not a functional check",
    "lmttm_monai.experiments.salstm_cost": "a benchmark, as above",
    "lmttm_monai.experiments.bench": "a benchmark of minutes that needs the authors' code: tests/test_bench.py runs it small",
    "label-install.sh": "builds MONAI Label's own environment: .ci/run runs it before the tests",
    "start_server": "a server that runs until stopped: tests/test_monailabel.py starts it and talks to it",
    "label serve": "the same server, started by lmttm-monai (tests/test_cli.py checks the command it runs)",
}

BUDGET = {
    "lmttm": ["--epochs", "1", "--batch_size", "8", "--num_workers", "0", "--epoch_length", "2"],
    "mam_swinunetr": ["--max_cases", "3", "--epochs", "1", "--epoch_length", "2", "--num_workers", "0", "--num_samples", "1"],
    "mam_unetr": ["--max_cases", "2", "--epochs", "1", "--val_interval", "1", "--epoch_length", "2", "--num_workers", "0",
                  "--num_samples", "2"],
    "salstm": ["--max_cases", "3", "--num_workers", "0", "--epochs", "1", "--batch_size", "2", "--num_samples", "2",
               "--epoch_length", "2"],
}  # fmt: skip
TRAINING_ONLY = ("--epochs", "--val_interval", "--epoch_length", "--num_samples", "--batch_size")


def readme_commands() -> list[str]:
    """The lines of README.md's ``bash`` blocks, without comments, in order."""
    commands, in_block = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block = line.strip() == "```bash" if not in_block else False
            continue
        if in_block:
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def _bundle_of(command: str) -> str | None:
    match = re.search(r"bundles/(\w+)/", command) or re.match(r"lmttm-monai (?:train|evaluate|infer) (\w+)", command)
    return match.group(1) if match else None


def _without(args: list[str], keys: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in keys:
            skip = True
        else:
            out.append(arg)
    return out


def budgeted(command: str) -> str:
    """``command`` with the quick budget of its bundle appended (replacing the README's own ``--epochs``); a results
    comparison runs one seed of two arms for one short epoch."""
    if command.startswith("python -m lmttm_monai.experiments.results run "):
        command = re.sub(r"--seeds \S+", "--seeds 0 --arms lmttm,ttm", command.replace("--jobs 2", "--jobs 1"))
        return re.sub(r"epochs=\d+", "epochs=1,epoch_length=2,num_workers=0,batch_size=8", command)
    bundle = _bundle_of(command)
    runs = re.search(r"monai\.bundle run\b", command) or re.match(r"lmttm-monai (train|evaluate|infer) ", command)
    if bundle is None or not runs:
        return command
    training = "training" in command or command.startswith("lmttm-monai train")
    budget = BUDGET[bundle] if training else _without(BUDGET[bundle], TRAINING_ONLY)
    command = re.sub(r" --epochs \d+", "", command)
    return f"{command} {' '.join(budget)}"


def group_of(command: str) -> str:
    """The group a README command runs in: the commands of one group depend only on each other (and on the
    ``export`` lines, which every group runs where the README has them), so the groups run side by side."""
    if command.startswith("lmttm-monai "):
        return "cli"
    if "lmttm_monai.experiments.results" in command:
        return "results"
    if "lmttm_monai.bundle.release" in command:
        return "release"
    return _bundle_of(command) or "cli"  # the MONAI Label helper is a command-line tool too


def grouped_commands() -> dict[str, list[str]]:
    """The README's runnable commands by group, each group in the README's order, ``export`` lines in every group."""
    ordered = [c for c in readme_commands() if not any(marker in c for marker in NOT_RUN)]
    names = sorted({group_of(c) for c in ordered if not c.startswith("export ")})
    return {g: [c for c in ordered if c.startswith("export ") or group_of(c) == g] for g in names}


GROUPS = grouped_commands()
# what each group must leave behind, so a parsing slip that runs nothing (or the wrong thing) fails
OUTPUTS = {
    "lmttm": ["runs/lmttm/models/model.pt"],
    "mam_swinunetr": ["runs/mam_swinunetr-folder/*_seg.nii.gz"],
    "mam_unetr": ["runs/mam_unetr/models/model.pt", "runs/mam_unetr-folder/*_seg.png"],
    "salstm": ["runs/salstm-folder/*_seg.nii.gz"],
    "results": ["runs/results/lmttm/results.md"],
    "cli": ["runs/lmttm/*-train/models/model.pt", "runs/mam_swinunetr/*-infer/*_seg.nii.gz"],
    "release": ["release/lmttm_v*.zip"],
}


def make_workspace(root: Path, medmnist_dir: Path, hippocampus_dir: Path, drive_dir: Path) -> Path:
    """A copy of the repository's bundles (the shipped models come along, the README infers with them first; a local
    run's other files do not), ``../shared/data`` beside it, and the placeholder inputs made of real files."""
    repo = root / "repo"
    shutil.copytree(REPO_ROOT / "bundles", repo / "bundles",
                    ignore=shutil.ignore_patterns("checkpoint.pt", "*.ts", "eval", "__pycache__"))  # fmt: skip
    (root / "shared").mkdir()
    os.symlink(medmnist_dir.parent, root / "shared" / "data")
    inputs = repo / "path" / "to"
    (inputs / "volumes").mkdir(parents=True)
    for image in sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[:2]:
        shutil.copy(image, inputs / "volumes" / image.name)
    (inputs / "pictures").mkdir()
    picture = sorted((drive_dir / "test" / "images").iterdir())[0]
    shutil.copy(picture, inputs / "pictures" / picture.name)
    volume = np.load(medmnist_dir / "adrenalmnist3d.npz")["test_images"][0]
    nib.save(nib.Nifti1Image(volume.astype(np.uint8), np.eye(4)), inputs / "volume.nii.gz")
    (root / "home").mkdir()
    return repo


def test_the_readme_commands_fall_into_groups_that_cover_every_command_family():
    ran = [c for commands in GROUPS.values() for c in commands]
    assert sorted(GROUPS) == sorted(OUTPUTS)
    # the README's main job and each command family are run (a parsing slip would silently run nothing)
    assert any(c.startswith("python -m monai.bundle run training --config_file bundles/lmttm/configs/train.json") for c in ran)
    for family in ("lmttm-monai list", "lmttm-monai train", "lmttm-monai infer", "torchrun", "ckpt_export", "release package",
                   "lmttm_monai.experiments.results run", "--resume true"):
        assert any(family in c for c in ran), family


@pytest.mark.parametrize("group", sorted(GROUPS))  # under pytest -n the groups run side by side (tests/conftest.py)
def test_every_readme_command_runs_in_the_readmes_order(group, tmp_path, medmnist_dir, hippocampus_dir, drive_dir):
    workspace = make_workspace(tmp_path, medmnist_dir, hippocampus_dir, drive_dir)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "ignore"}
    env[BUNDLES_ENV] = str(workspace / "bundles")  # lmttm-monai uses the copy, not the installed bundles
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the tests' python and lmttm-monai
    failures = []
    for command in GROUPS[group]:
        if command.startswith("export "):
            name, value = command[len("export "):].split("=", 1)
            env[name] = str((workspace / value).resolve()) if value.startswith(".") else value
            continue
        run = budgeted(command)
        result = subprocess.run(run, shell=True, cwd=workspace, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            failures.append(f"{run}\n  exit {result.returncode}: " + "\n  ".join(tail))
    assert not failures, "README commands that failed:\n" + "\n".join(failures)
    for pattern in OUTPUTS[group]:
        assert list(workspace.glob(pattern)), f"{group}: nothing at {pattern}"


def test_ci_installs_and_tests_as_the_readme_says():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    install = next(c for c in readme_commands() if c.startswith("pip install torch"))
    assert install.replace("pip install", "pip install -q") in ci
    (full,) = [c for c in readme_commands() if c.startswith("python -m pytest") and "not slow" not in c]
    assert full.endswith(" tests") and full.replace("python -m pytest -q", "python -m pytest -q -rs --durations=20") in ci
