"""``python -m lmttm_monai.experiments.results``: seeds x arms through the bundle configs, a table, and reruns that keep results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def results(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmttm_monai.experiments.results", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip


def test_arms_run_one_call_each_share_one_table_and_a_rerun_repeats_no_finished_run(medmnist_dir, tmp_path):
    budget = f"epochs=1,epoch_length=2,batch_size=8,num_workers=0,dataset_dir={medmnist_dir}"
    common = ["lmttm", "--out", str(tmp_path), "--seeds", "0", "--override", budget]
    for arm in ("ttm", "lmttm"):  # one arm per call, the later one first in the comparison's order
        made = results("run", *common, "--arms", arm)
        assert made.returncode == 0, made.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("# lmttm: LMTTM vs TTM")
    rows = [line for line in table.splitlines() if line.startswith("| LMTTM |") or line.startswith("| TTM |")]
    assert len(rows) == 2 and " ± " in rows[0] and "over 1 seeds" in rows[1]  # mean ± std and the paired difference
    assert "Majority-class rate of the adrenalmnist3d test split: 0.7685 (229 of 298)" in table
    record = json.loads((tmp_path / "ttm" / "seed0" / "run.json").read_text())
    assert set(record["metrics"]) == {"test_acc", "test_auc"} and 0 <= record["metrics"]["test_auc"] <= 1
    assert len(record["curve"]) == 1 and "ttm.json" in record["commands"][0]
    assert record["resumed_after_epochs"] == []  # trained in one piece: its seconds time the whole run
    stamp = (tmp_path / "ttm" / "seed0" / "run.json").stat().st_mtime_ns
    again = results("run", *common, "--arms", "lmttm,ttm")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "ttm" / "seed0" / "run.json").stat().st_mtime_ns == stamp  # kept, not trained again
    assert json.loads((tmp_path / "comparison.json").read_text())["arms"] == ["LMTTM", "TTM"]


def test_a_resumed_run_is_recorded_as_resumed_and_its_partial_time_is_left_out_of_minutes_per_run(
    medmnist_dir, tmp_path
):
    budget = f"epochs=1,epoch_length=2,batch_size=8,num_workers=0,dataset_dir={medmnist_dir}"
    common = ["lmttm", "--out", str(tmp_path), "--arms", "ttm", "--seeds", "0", "--override", budget]
    assert results("run", *common).returncode == 0
    record = tmp_path / "ttm" / "seed0" / "run.json"
    whole = json.loads(record.read_text())
    # killed after training, before run.json was written: the rerun continues from the checkpoint and only tests
    record.unlink()
    again = results("run", *common)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(record.read_text())
    assert resumed["resumed_after_epochs"] == [1] and resumed["metrics"] == whole["metrics"]
    row = next(line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| TTM |"))
    assert row.endswith("| n/a (1 resumed, not timed) |"), row


def test_an_override_to_none_sets_none_in_the_bundle_instead_of_being_dropped(tmp_path):
    from lmttm_monai.experiments.results import _override_args

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"loss": {"weight": [1.0, 2.0]}, "check": "$print('weight is', @loss#weight)"}))
    command = [sys.executable, "-m", "monai.bundle", "run", "check", "--config_file", str(config)]
    given = subprocess.run([*command, *_override_args({"loss#weight": "None"})], capture_output=True, text=True)
    assert given.returncode == 0, given.stderr[-3000:]
    assert "weight is None" in given.stdout
    kept = subprocess.run([*command, *_override_args({"loss#weight": "[3.0, 4.0]"})], capture_output=True, text=True)
    assert "weight is [3.0, 4.0]" in kept.stdout  # any other value reaches the config as written


def test_an_unknown_comparison_or_arm_is_one_line_naming_the_choices(tmp_path):
    unknown = results("run", "nope", "--out", str(tmp_path))
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines()[-1] == (
        "lmttm_monai.experiments.results: error: unknown comparison 'nope'; choose one of lmttm, mam_swinunetr, mam_unetr, salstm"
    )
    arm = results("run", "lmttm", "--out", str(tmp_path), "--arms", "vit")
    assert arm.returncode == 1 and arm.stderr.strip().splitlines()[-1].endswith(
        "choose from lmttm, ttm, ttm-scenic, 3d-resnet-18, lmttm-paper, 3d-densenet-121-64"
    )


def test_an_override_given_twice_is_refused_with_the_one_flag_to_give_instead_and_nothing_runs(tmp_path):
    # fire alone would keep the last --override and train with the default epochs, silently
    twice = results("run", "lmttm", "--out", str(tmp_path / "out"), "--override", "epochs=100",
                    "--override=dataset_dir=/data/medmnist")  # fmt: skip
    assert twice.returncode == 1
    assert twice.stderr.strip().splitlines()[-1] == (
        "lmttm_monai.experiments.results: error: --override is given 2 times (epochs=100, dataset_dir=/data/medmnist) and only"
        " the last would be used: give it once (a flag that takes several values takes them joined by commas:"
        " --override epochs=100,dataset_dir=/data/medmnist)"
    )
    assert not (tmp_path / "out").exists()


def test_an_override_of_a_nested_key_reaches_the_command_whole_not_cut_at_the_hash(tmp_path):
    # fire reads values as Python, where # starts a comment: unprotected, loss#weight arrives as "loss"
    cut = results("run", "lmttm", "--out", str(tmp_path), "--arms", "lmttm", "--override", "loss#weight")
    assert cut.returncode == 1
    assert cut.stderr.strip().splitlines()[-1] == (
        "lmttm_monai.experiments.results: error: override 'loss#weight' is not key=value (for example epochs=50)"
    )
