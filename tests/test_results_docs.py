"""docs/results.md reports what the raw runs in docs/results/ hold.

Each folder of ``docs/results/`` keeps the ``run.json`` of every reported run as ``<arm>-seed<N>.json``. For each
arm, the mean ± sample std over its seeds of both test metrics must appear in docs/results.md written the way the
document writes them (.8293 ± .0017 for a score, 1.40 ± 0.07 for a distance): a number edited by hand, or a seed
added without rewriting the table, fails here.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import numpy as np
import pytest

from conftest import REPO_ROOT

RAW = REPO_ROOT / "docs" / "results"
RESULTS_MD = REPO_ROOT / "docs" / "results.md"


def arms() -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for path in sorted(RAW.glob("*/*-seed*.json")):
        arm = re.sub(r"-seed\d+\.json$", "", path.name)
        groups[f"{path.parent.name}/{arm}"].append(json.loads(path.read_text()))
    return dict(groups)


def as_written(values: list[float]) -> str:
    """Mean ± sample std the way docs/results.md writes it: scores below 1 as .xxxx, distances with 2 decimals.

    A single run (a seed reported before the others have run) is its value alone.
    """
    mean = float(np.mean(values))
    digits = 4 if abs(mean) < 1 else 2
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" ± {float(np.std(values, ddof=1)):.{digits}f}"
    return text.replace("0.", ".") if abs(mean) < 1 else text


def test_as_written_matches_the_documents_spelling():
    assert as_written([0.8298, 0.8274, 0.8307]) == ".8293 ± .0017"
    assert as_written([1.3817, 1.3304, 1.4744]) == "1.40 ± 0.07"
    assert as_written([0.78412]) == ".7841" and as_written([11.2174]) == "11.22"


def test_the_raw_runs_are_found():
    found = arms()
    assert "lmttm_adrenalmnist3d_28/lmttm" in found and "salstm_hippocampus/salstm" in found
    assert sum(len(runs) for runs in found.values()) >= 45


@pytest.mark.parametrize("arm", sorted(arms()))
def test_each_arms_mean_and_std_over_its_seeds_is_the_one_docs_results_reports(arm):
    runs = arms()[arm]
    text = RESULTS_MD.read_text()
    for metric in runs[0]["metrics"]:
        written = as_written([r["metrics"][metric] for r in runs])
        seeds = [r["seed"] for r in runs]
        assert written in text, f"{arm}: {metric} over seeds {seeds} is {written}, not in {RESULTS_MD.name}"


# each bundle's model card reports its default config's runs; the folder/arm of docs/results/ that holds them
DEFAULT_RUNS = {
    "lmttm": "lmttm_adrenalmnist3d_28/lmttm",
    "mam_swinunetr": "mam_swinunetr_hippocampus/mam-swinunetr-ists",
    "mam_unetr": "mam_unetr_drive_600epochs/mam-unetr",
    "salstm": "salstm_hippocampus/salstm",
}


def test_every_bundle_has_its_default_runs_named():
    assert sorted(DEFAULT_RUNS) == sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if p.is_dir())


@pytest.mark.parametrize("bundle", sorted(DEFAULT_RUNS))
def test_each_model_card_reports_its_default_configs_score_over_at_least_3_seeds_from_the_raw_runs(bundle):
    runs = arms()[DEFAULT_RUNS[bundle]]
    assert len({r["seed"] for r in runs}) >= 3
    first_metric = next(iter(runs[0]["metrics"]))
    written = as_written([r["metrics"][first_metric] for r in runs])
    card = REPO_ROOT / "bundles" / bundle / "docs" / "README.md"
    assert written in card.read_text(), f"{card.relative_to(REPO_ROOT)} does not report {first_metric} {written}"


@pytest.mark.parametrize("bundle", sorted(DEFAULT_RUNS))
def test_each_bundles_metadata_eval_metrics_are_its_shipped_models_scores_else_the_mean_of_its_default_runs(bundle):
    meta = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
    shipped = RAW / "shipped" / f"{bundle}.json"  # python -m lmttm_monai.bundle.ship: the scores of the weights in the bundle
    if shipped.is_file():
        expected = {m: round(v, 4) for m, v in json.loads(shipped.read_text())["metrics"].items()}
    else:
        runs = arms()[DEFAULT_RUNS[bundle]]
        expected = {m: round(float(np.mean([r["metrics"][m] for r in runs])), 4) for m in runs[0]["metrics"]}
    assert meta.get("eval_metrics") == expected
