"""The shipped models: ``bundles/NAME/models/model.pt`` as the repository holds them.

Each is a small fp32 state dict that loads into its bundle's inference network; its record
(``docs/results/shipped/NAME.json``), ``metadata.json`` (version, ``eval_metrics``), ``large_files.yml`` (url and
sha256) and model card agree with it; re-scored through the bundle's own ``evaluate.json`` on the test split the
card reports, it reaches ``eval_metrics`` to ±0.002; and inference with no training and no ``--ckpt_dir``, from a
folder outside the checkout, gives correct predictions. ``python -m lmttm_monai.bundle.ship`` writes all of these
together; the last test runs it on a tiny training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from bundle_helpers import bundle, config_list, dice, read_rows
from conftest import DRIVE_DIR, HIPPOCAMPUS_DIR, MEDMNIST_DIR, REPO_ROOT, SHIPPED_BUNDLES

from lmttm_monai.bundle import ship as shipping
from lmttm_monai.bundle.release import asset_url, version_mentions
from lmttm_monai.utils.bundles import BUNDLES_ENV

BUNDLES = REPO_ROOT / "bundles"
CLI = Path(sys.executable).parent / "lmttm-monai"
SHIPPED = SHIPPED_BUNDLES
DATA = {"lmttm": MEDMNIST_DIR, "mam_swinunetr": HIPPOCAMPUS_DIR, "mam_unetr": DRIVE_DIR, "salstm": HIPPOCAMPUS_DIR}
TOLERANCE = 0.002


def tracked_models() -> list[str]:
    """The bundles whose ``models/model.pt`` git tracks (a local training may leave untracked ones)."""
    listed = subprocess.run(["git", "ls-files", "bundles/*/models/model.pt"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    return sorted(Path(f).parts[1] for f in listed)


def assert_in_step(repo: Path, name: str) -> dict:
    """The weights, record, metadata, large_files.yml and card of bundle ``name`` under ``repo`` describe one model;
    returns the record."""
    root = repo / "bundles" / name
    weights = root / "models" / "model.pt"
    record = json.loads((repo / "docs" / "results" / "shipped" / f"{name}.json").read_text())
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert record["sha256"] == shipping.sha256(weights) and record["bytes"] == weights.stat().st_size
    # the record names the version that shipped these weights; later versions (python -m lmttm_monai.bundle.release
    # bump) keep them, and large_files.yml names the current version's asset
    assert record["bundle"] == name and record["version"] in meta["changelog"]
    assert f"shipped model: {record['arm']} seed {record['seed']}" in meta["changelog"][record["version"]]
    shipped_after = list(meta["changelog"]).index(record["version"])
    assert not any("shipped model" in line for line in list(meta["changelog"].values())[:shipped_after])
    assert meta["eval_metrics"] == {k: round(v, 4) for k, v in record["metrics"].items()}
    (entry,) = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
    assert entry == {"path": "models/model.pt", "url": asset_url(name, meta["version"]),
                     "hash_val": record["sha256"], "hash_type": "sha256"}  # fmt: skip
    card = (root / "docs" / "README.md").read_text()
    assert card.count(shipping.CARD_START) == 1 and shipping.card_section(record) in card
    text = json.dumps(record)
    assert str(repo) not in text and str(REPO_ROOT.parent) not in text, "the record names a folder of this machine"
    for key in ("metrics", "curve", "commands", "seconds", "threads", "seed", "commit"):
        assert record.get(key) not in (None, [], {}), key
    return record


def test_the_bundles_that_ship_a_model_are_the_ones_this_test_names():
    assert tracked_models() == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_is_a_small_fp32_state_dict_that_loads_into_its_inference_network(name):
    weights = BUNDLES / name / "models" / "model.pt"
    assert weights.stat().st_size < shipping.MAX_BYTES
    assert shipping.check_weights(weights, BUNDLES / name) > 0
    total = sum((BUNDLES / n / "models" / "model.pt").stat().st_size for n in SHIPPED)
    assert total < 60 * 2**20


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_models_record_metadata_large_files_and_card_agree(name):
    assert_in_step(REPO_ROOT, name)


@pytest.mark.parametrize("name", sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()))
def test_every_download_command_and_release_tag_in_the_readme_and_card_names_the_bundles_current_version(name):
    version = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())["version"]
    for doc in (REPO_ROOT / "README.md", BUNDLES / name / "docs" / "README.md"):
        named = {m.group(2) for m in version_mentions(name).finditer(doc.read_text())}
        assert named <= {version}, f"{doc.relative_to(REPO_ROOT)} names {name} {sorted(named)}, not {version}"


def test_check_weights_refuses_half_precision_and_a_network_it_does_not_fit(tmp_path):
    import torch

    state = torch.load(BUNDLES / "salstm" / "models" / "model.pt", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "half.pt")
    with pytest.raises(shipping.ShipError, match="not fp32"):
        shipping.check_weights(tmp_path / "half.pt", BUNDLES / "salstm")
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
        shipping.check_weights(BUNDLES / "salstm" / "models" / "model.pt", BUNDLES / "lmttm")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_rescored_through_its_bundles_evaluate_config_reaches_its_eval_metrics(name, tmp_path):
    configs = BUNDLES / name / "configs"
    bundle(
        "run", "evaluating", "--config_file", config_list(str(configs / "train.json"), str(configs / "evaluate.json")),
        "--ckpt_dir", str(BUNDLES / name / "models"), "--output_dir", str(tmp_path),
        "--dataset_dir", str(DATA[name]), "--num_workers", "0",
    )  # fmt: skip
    scored = {}
    for line in (tmp_path / "metrics.csv").read_text().splitlines():  # MONAI MetricsSaver: "name<TAB>value"
        metric, _, value = line.replace("\t", ",").partition(",")
        scored[metric] = float(value)
    expected = json.loads((configs / "metadata.json").read_text())["eval_metrics"]
    for metric, value in expected.items():
        assert abs(scored[metric] - value) <= TOLERANCE, f"{name} {metric}: re-scored {scored[metric]:.4f}, card {value}"


def _infer(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(CLI), "infer", name, "--num_workers", "0", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(weights {BUNDLES / name / 'models' / 'model.pt'})" in result.stdout  # the shipped model, said so
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """The project installed as a user installs it without ``-e``: pip builds a wheel from a copy of the source tree
    (bundles and shipped models go in as package data) into a folder of its own; and the environment that imports
    lmttm_monai from there, not from this checkout."""
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split("\n")  # fmt: skip
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    result = subprocess.run([*pip, str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != BUNDLES_ENV}
    return target, {**env, "PYTHONPATH": str(target)}


@pytest.mark.slow
def test_a_regular_install_lists_its_own_bundles_and_infers_with_the_shipped_lmttm_from_another_folder(
    installed, tmp_path
):
    from sklearn.metrics import roc_auc_score

    target, env = installed
    cli = [sys.executable, str(target / "bin" / "lmttm-monai")]
    code = "import lmttm_monai.utils as u; print(u.__file__); print(u.bundles_dir())"
    where = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    assert [Path(p).is_relative_to(target) for p in where] == [True, True], where
    listed = subprocess.run([*cli, "list"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    for name in ("lmttm", "mam_swinunetr", "mam_unetr", "salstm"):
        version = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())["version"]
        assert re.search(rf"^  {name} +v{re.escape(version)} ", listed, re.M), listed

    out = tmp_path / "out"
    args = ["infer", "lmttm", "--num_workers", "0", "--dataset_dir", str(MEDMNIST_DIR), "--output_dir", str(out)]
    result = subprocess.run([*cli, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = target / "lmttm_monai" / "bundles" / "lmttm" / "models" / "model.pt"
    assert f"(weights {weights})" in result.stdout  # the installed copy of the shipped model, said so
    header, *rows = read_rows(out / "predictions.csv")
    probability = np.array([float(row[header.index("prob_hyperplasia")]) for row in rows])
    labels = np.load(MEDMNIST_DIR / "adrenalmnist3d.npz")["test_labels"].reshape(-1)
    assert len(rows) == len(labels) == 298
    auc = roc_auc_score(labels, probability)  # rows keep the dataset's order
    expected = json.loads((BUNDLES / "lmttm" / "configs" / "metadata.json").read_text())["eval_metrics"]["test_auc"]
    assert abs(auc - expected) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mam_swinunetr", "salstm"])
def test_a_segmentation_bundle_segments_a_test_volume_with_its_shipped_model_and_no_training(name, tmp_path):
    from lmttm_monai.data import decathlon_datalist

    case = decathlon_datalist(HIPPOCAMPUS_DIR, "test")[0]
    _infer(name, tmp_path, "--input", case["image"], "--output_dir", str(tmp_path / "out"))
    (segmentation,) = (tmp_path / "out").glob("*_seg.nii.gz")
    seg = np.asarray(nib.load(segmentation).dataobj)
    label = np.asarray(nib.load(case["label"]).dataobj)
    assert seg.shape == label.shape
    assert dice(seg, label, 1) > 0.75 and dice(seg, label, 2) > 0.75  # an untrained network scores near 0


@pytest.mark.slow
def test_ship_writes_weights_record_metadata_large_files_and_card_together_and_keeps_other_weights_unless_asked(
    tmp_path, hippocampus_dir
):
    repo = tmp_path / "repo"
    shutil.copytree(BUNDLES / "salstm", repo / "bundles" / "salstm", ignore=shutil.ignore_patterns("models", "eval"))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-C", str(repo)]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bundle"]):  # a record names its commit
        subprocess.run(git + command, check=True, capture_output=True)
    version = json.loads((repo / "bundles" / "salstm" / "configs" / "metadata.json").read_text())["version"]
    tiny = (f"dataset_dir={hippocampus_dir},max_cases=3,epochs=1,epoch_length=2,num_workers=0,batch_size=2,"
            "num_samples=2")  # fmt: skip
    first = shipping.ship("salstm", seed=0, out=str(tmp_path / "runs"), override=tiny, repo=str(repo))
    assert first.startswith(f"shipped {repo / 'bundles' / 'salstm' / 'models' / 'model.pt'}")
    record = assert_in_step(repo, "salstm")
    assert record["version"] == shipping._next_version(version) and record["seed"] == 0
    assert record["overrides"]["epochs"] == "1" and "epochs=1" in shipping.card_section(record)
    assert str(tmp_path) not in json.dumps(record)
    card = (repo / "bundles" / "salstm" / "docs" / "README.md").read_text()
    assert {m.group(2) for m in version_mentions("salstm").finditer(card)} == {record["version"]}

    # the same run again changes nothing; another run's weights replace the shipped ones only when asked
    again = shipping.ship("salstm", seed=0, out=str(tmp_path / "runs"), override=tiny, repo=str(repo))
    assert "already this run's model" in again and assert_in_step(repo, "salstm") == record
    with pytest.raises(shipping.ShipError, match="--replace true"):
        shipping.ship("salstm", seed=1, out=str(tmp_path / "runs"), override=tiny, repo=str(repo))
    assert assert_in_step(repo, "salstm") == record
    shipping.ship("salstm", seed=1, out=str(tmp_path / "runs"), override=tiny, replace=True, repo=str(repo))
    replaced = assert_in_step(repo, "salstm")
    assert replaced["seed"] == 1 and replaced["sha256"] != record["sha256"]
    assert replaced["version"] == shipping._next_version(record["version"])


def test_bump_writes_a_new_version_everywhere_and_refuses_a_used_version_or_a_changelog_paragraph(tmp_path):
    import lmttm_monai
    from lmttm_monai.bundle.release import ReleaseError, set_version

    for name in ("salstm", "mam_unetr"):  # with shipped weights, and without
        root = Path(shutil.copytree(BUNDLES / name, tmp_path / name, ignore=shutil.ignore_patterns("eval")))
        (tmp_path / "README.md").write_text(f"python -m monai.bundle download --name {name} --version 0.0.1 ...\n")
        old = json.loads((root / "configs" / "metadata.json").read_text())
        set_version(str(root), "9.9.9", "one line", repo=str(tmp_path))
        meta = json.loads((root / "configs" / "metadata.json").read_text())
        assert meta["version"] == "9.9.9" and list(meta["changelog"].items())[0] == ("9.9.9", "one line")
        assert meta["changelog"] == {"9.9.9": "one line", **old["changelog"]}
        assert meta["required_packages_version"]["lmttm-monai"] == lmttm_monai.__version__
        (entry,) = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
        assert entry["url"] == asset_url(name, "9.9.9")
        if (root / "models" / "model.pt").is_file():
            assert entry["hash_val"] == shipping.sha256(root / "models" / "model.pt")
        for doc in (root / "docs" / "README.md", tmp_path / "README.md"):
            assert {m.group(2) for m in version_mentions(name).finditer(doc.read_text())} <= {"9.9.9"}
        assert "--version 9.9.9" in (tmp_path / "README.md").read_text()
        with pytest.raises(ReleaseError, match="already in the changelog"):
            set_version(str(root), "9.9.9", "again")
        with pytest.raises(ReleaseError, match="one line"):
            set_version(str(root), "9.9.10", "two\nlines")


@pytest.mark.slow
def test_mam_unetr_segments_the_vessels_of_a_test_picture_with_its_shipped_model_and_no_training(tmp_path):
    from PIL import Image

    _infer("mam_unetr", tmp_path, "--input", str(DRIVE_DIR / "test" / "images" / "01_test.tif"),
           "--output_dir", str(tmp_path / "out"))  # fmt: skip
    seg = np.array(Image.open(tmp_path / "out" / "01_test_seg.png")) > 0
    vessels = np.array(Image.open(DRIVE_DIR / "test" / "1st_manual" / "01_manual1.gif")) > 0
    assert seg.shape == vessels.shape
    assert dice(seg.astype(int), vessels.astype(int), 1) > 0.7  # an untrained network scores far below

