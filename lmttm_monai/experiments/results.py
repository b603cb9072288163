"""Multi-seed comparisons through the bundles' own configs: ``python -m lmttm_monai.experiments.results``.

A comparison is a bundle and its arms (the default network and the overlays that swap it, e.g. LMTTM vs TTM vs a
3D ResNet-18). ``run`` trains every arm with every seed (``python -m monai.bundle run training`` with the bundle's
``train.json``, the arm's overlays, ``--seed`` and the budget overrides), evaluates each on the whole test split
(the bundle's ``evaluate.json``), and writes ``results.md`` (mean ± std per arm, the paired difference to the
first arm on the same seeds and, for segmentation, on the same cases, the budget, the machine and the exact
commands) and one ``run.json`` per run. Rerun it and finished runs are kept; a run killed while training continues
from its last epoch (the bundles' ``--resume true``). ``--jobs`` runs several at once, each with its share of the
CPU threads. Any MedMNIST 3D dataset works: ``--override dataset_name=vesselmnist3d``. The table comes with
pictures of the finished runs (:mod:`lmttm_monai.experiments.figures`: curves, ROC and confusion or segmentation overlays, the
LMTTM memory), written into ``--figures DIR`` (default ``OUT/figures``) and linked from results.md.

    python -m lmttm_monai.experiments.results run lmttm --seeds 0,1,2 --out results/lmttm --override epochs=50 --jobs 2
    python -m lmttm_monai.experiments.results table results/lmttm --figures docs/figures
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lmttm_monai.utils.outputs import atomic_path
from lmttm_monai.experiments.records import (
    COMPARISONS,
    Arm,
    Comparison,
    ResultsError,
    comparison_named,
    read_curve,
    read_metrics,
    read_per_case,
    read_per_label,
    read_resumes,
    read_train_loss,
    select_arms,
    test_labels,
)
from lmttm_monai.utils.bundles import bundles_dir
from lmttm_monai.utils.misc import comma_list

__all__ = ["Arm", "COMPARISONS", "Comparison", "git_commit", "main", "run", "run_one", "table"]

def _configs(bundle_root: Path, *names: str) -> str:
    return "[" + ",".join(repr(str(bundle_root / "configs" / name)) for name in names) + "]"


def _display(command: list[str]) -> str:
    """A command as a person would type it: ``python`` for this interpreter, config lists in double quotes."""
    words = ["python" if word == sys.executable else word for word in command]
    return " ".join(f'"{w}"' if any(c in w for c in " '[]") else shlex.quote(w) for w in words)


def _override_args(overrides: dict[str, str]) -> list[str]:
    # monai.bundle run drops a keyword whose value is None, so loss#weight=None would leave the weight in place;
    # the expression $None sets it
    return [part for key, value in overrides.items() for part in (f"--{key}", "$None" if value == "None" else value)]


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder`` (``git rev-parse HEAD``), or None outside a git checkout."""
    try:
        found = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return (found.stdout.strip() or None) if found.returncode == 0 else None


def run_one(
    comparison: Comparison, arm: Arm, seed: int, out: Path, overrides: dict, threads: int, bundles: Path | None = None
) -> dict:
    """Train and evaluate one arm with one seed into ``out/<arm>/seed<N>`` (or keep what an earlier call finished)
    and return its record, also written there as ``run.json``; ``bundles`` is the folder that holds the bundle."""
    run_dir = out / arm.slug / f"seed{seed}"
    record = run_dir / "run.json"
    if record.is_file():
        return json.loads(record.read_text())
    root = (bundles or bundles_dir()) / comparison.bundle
    run_dir.mkdir(parents=True, exist_ok=True)
    common = ["--seed", str(seed), "--ckpt_dir", str(run_dir / "models"), *_override_args(overrides)]
    train = [sys.executable, "-m", "monai.bundle", "run", "training",
             "--config_file", _configs(root, "train.json", *arm.overlays), *common,
             "--output_dir", str(run_dir / "train")]  # fmt: skip
    if (run_dir / "models" / "checkpoint.pt").is_file():
        train += ["--resume", "true"]  # killed earlier: continue after its last epoch
    evaluate = [sys.executable, "-m", "monai.bundle", "run", "evaluating",
                "--config_file", _configs(root, "train.json", "evaluate.json", *arm.overlays), *common,
                "--output_dir", str(run_dir / "test"), "--overwrite", "true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    commit = git_commit(root)  # the code the training starts with (a long run may outlast later commits)
    started = time.time()
    for name, command in (("train", train), ("test", evaluate)):
        with open(run_dir / f"{name}.log", "a") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            tail = (run_dir / f"{name}.log").read_text().strip().splitlines()[-1:]
            raise ResultsError(f"{arm.label} seed {seed}: {name} failed ({run_dir / f'{name}.log'}: {' '.join(tail)})")
    log = (run_dir / "train.log").read_text()
    result = {
        "arm": arm.label, "seed": seed, "overlays": list(arm.overlays), "overrides": overrides,
        "metrics": read_metrics(run_dir / "test" / "metrics.csv"),
        "curve": read_curve(log, comparison.curve),
        "train_loss": [round(v, 6) for v in read_train_loss(log)],
        # the wall time of this call only: a resumed run's earlier pieces are not in it (see resumed_after_epochs)
        "seconds": round(time.time() - started, 1), "threads": threads, "resumed_after_epochs": read_resumes(log),
        "commands": [_display(train), _display(evaluate)], "commit": commit,
    }  # fmt: skip
    if comparison.per_case and (run_dir / "test" / comparison.per_case).is_file():
        result["per_case"] = read_per_case(run_dir / "test" / comparison.per_case)
        result["per_label"] = read_per_label(run_dir / "test", comparison.metrics)
    with atomic_path(record) as tmp:  # last, and whole: its presence means the run finished
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    return result


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }  # fmt: skip


def run(
    name: str,
    out: str,
    seeds: str | int = "0,1,2",
    jobs: int = 1,
    override: tuple | list | str = (),
    arms: str = "",
    figures: str | None = None,
) -> str:
    """Train and evaluate every arm of comparison ``name`` with every seed into ``out``, then write the table.

    Args:
        name: one of :data:`COMPARISONS`.
        out: the results folder (created; rerun to continue).
        seeds: comma-separated seeds (``0,1,2``), or one seed.
        jobs: trainings side by side; each gets ``cores // jobs`` threads.
        override: ``key=value`` config overrides for every run (the budget: ``epochs=50``; another dataset).
        arms: comma-separated arm labels or slugs to run (default: all).
        figures: folder for the pictures of the finished runs (default ``out/figures``); see :func:`table`.
    """
    comparison = select_arms(comparison_named(name), arms)
    seed_list = _seeds(seeds)
    overrides = parse_overrides(override)
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = max(1, int(jobs))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tasks = [(arm, seed) for seed in seed_list for arm in comparison.arms]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_one, comparison, arm, seed, out_dir, overrides, threads) for arm, seed in tasks]
        for future in futures:
            future.result()
    arm_labels, seed_list = _merged_with_earlier(out_dir / "comparison.json", name, overrides, comparison, seed_list)
    info = {"name": name, "arms": arm_labels, "seeds": seed_list, "overrides": overrides,
            "jobs": jobs, "machine": machine()}  # fmt: skip
    with atomic_path(out_dir / "comparison.json") as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    return table(str(out_dir), figures)


def _merged_with_earlier(
    info_path: Path, name: str, overrides: dict, comparison: Comparison, seeds: list[int]
) -> tuple[list[str], list[int]]:
    """The arms and seeds the table covers: this call's, and those of an earlier call into the same folder with the
    same comparison and overrides (so arms run one at a time, ``--arms TTM`` then ``--arms LMTTM``, share one
    table), arms in the comparison's order."""
    labels, seed_set = {a.label for a in comparison.arms}, set(seeds)
    if info_path.is_file():
        earlier = json.loads(info_path.read_text())
        if earlier.get("name") == name and earlier.get("overrides", {}) == overrides:
            labels |= set(earlier.get("arms", ()))
            seed_set |= set(earlier.get("seeds", ()))
    return [a.label for a in COMPARISONS[name].arms if a.label in labels], sorted(seed_set)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {std:.4f}"


def _last_fifth_change(curve: list[float]) -> float | None:
    """Mean of the last fifth of the validation curve minus that of the fifth before it (flat: near 0)."""
    n = len(curve) // 5
    if n < 1:
        return None
    return float(np.mean(curve[-n:]) - np.mean(curve[-2 * n : -n]))


def table(out: str, figures: str | None = None) -> str:
    """Write ``out/results.md`` from the ``run.json`` files in ``out``, with its pictures; returns its path.

    Args:
        out: the results folder.
        figures: folder for the PNG pictures of :mod:`lmttm_monai.experiments.figures` (for example ``docs/figures``), named
            after the comparison and its dataset; default ``out/figures``. results.md links them relative to its
            own folder. Given explicitly, a missing matplotlib is an error; by default results.md says so instead.
    """
    out_dir = Path(out).expanduser()
    info_path = out_dir / "comparison.json"
    if not info_path.is_file():
        raise ResultsError(f"{info_path} does not exist: run `python -m lmttm_monai.experiments.results run NAME --out {out}` first")
    info = json.loads(info_path.read_text())
    comparison = select_arms(comparison_named(info["name"]), info.get("arms", ()))
    runs = {arm.label: [json.loads(p.read_text()) for p in sorted((out_dir / arm.slug).glob("seed*/run.json"))]
            for arm in comparison.arms}  # fmt: skip
    for arm in comparison.arms:  # runs recorded before run.json had per_label: read it from their test folder
        for r in runs[arm.label]:
            test_dir = out_dir / arm.slug / f"seed{r['seed']}" / "test"
            if comparison.per_case and "per_label" not in r and test_dir.is_dir():
                r["per_label"] = read_per_label(test_dir, comparison.metrics)
    base = comparison.arms[0].label
    lines = [f"# {info['name']}: {' vs '.join(a.label for a in comparison.arms)}", "",
             f"Seeds {info['seeds']}; overrides {info['overrides'] or 'none (the bundle defaults)'}; "
             f"machine {info['machine']}; {info['jobs']} job(s) at a time.", "",
             "| arm | runs | " + " | ".join(comparison.metrics) + " | last-fifth change of " + comparison.curve
             + f" | paired diff vs {base} ({comparison.metrics[0]}) | minutes per run |",
             "|---" * (len(comparison.metrics) + 5) + "|"]  # fmt: skip
    base_by_seed = {r["seed"]: r for r in runs[base]}
    for arm in comparison.arms:
        rs = runs[arm.label]
        cells = [_mean_std([r["metrics"].get(m, float("nan")) for r in rs]) for m in comparison.metrics]
        changes = [c for c in (_last_fifth_change(r["curve"]) for r in rs) if c is not None]
        change = _mean_std(changes) if changes else "too few epochs"
        paired = "-"
        if arm.label != base:
            diffs = [r["metrics"][comparison.metrics[0]] - base_by_seed[r["seed"]]["metrics"][comparison.metrics[0]]
                     for r in rs if r["seed"] in base_by_seed]  # fmt: skip
            paired = f"{_mean_std(diffs)} over {len(diffs)} seeds"
            case_diffs = [value - base_by_seed[r["seed"]]["per_case"][case] for r in rs if r["seed"] in base_by_seed
                          and "per_case" in r for case, value in r["per_case"].items()
                          if case in base_by_seed[r["seed"]].get("per_case", {})]  # fmt: skip
            if case_diffs:
                paired += f"; per case {_mean_std(case_diffs)} over {len(case_diffs)} case-runs"
        minutes = _minutes(rs, out_dir / arm.slug)
        lines.append(f"| {arm.label} | {len(rs)} | " + " | ".join(cells) + f" | {change} | {paired} | {minutes} |")
    if comparison.bundle == "lmttm":
        lines += ["", _majority_line(info["overrides"])]
    lines += _per_label_lines(comparison, runs)
    lines += ["", "## Figures", "", *_figure_lines(out_dir, figures)]
    lines += ["", "Commands (first seed of each arm):", "", "```bash"]
    lines += [c for arm in comparison.arms for r in runs[arm.label][:1] for c in r["commands"]]
    lines += ["```", ""]
    path = out_dir / "results.md"
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines))
    return str(path)


def _minutes(runs: list[dict], arm_dir: Path) -> str:
    """Mean wall minutes over the runs trained in one piece: a resumed run's ``seconds`` time its last piece only,
    so it is left out and counted. Runs recorded before run.json kept ``resumed_after_epochs`` are read from their
    ``train.log``."""
    resumed = 0
    timed = []
    for r in runs:
        log = arm_dir / f"seed{r['seed']}" / "train.log"
        resumes = r.get("resumed_after_epochs")
        if resumes is None and log.is_file():
            resumes = read_resumes(log.read_text(errors="replace"))
        if resumes:
            resumed += 1
        else:
            timed.append(r["seconds"])
    text = f"{np.mean(timed) / 60:.1f}" if timed else "n/a"
    return text + (f" ({resumed} resumed, not timed)" if resumed else "")


def _per_label_lines(comparison: Comparison, runs: dict[str, list[dict]]) -> list[str]:
    """A table of each metric per label (mean ± std over the runs of the mean over test cases), where recorded."""
    metrics = [m for m in comparison.metrics if any(m in r.get("per_label", {}) for rs in runs.values() for r in rs)]
    if not metrics:
        return []
    recorded = [r["per_label"][m] for rs in runs.values() for r in rs for m in metrics if m in r.get("per_label", {})]
    labels = max(len(values) for values in recorded)
    header = [f"{m} label {k + 1}" for m in metrics for k in range(labels)]
    lines = ["", "Per label (label k is the segmentation's class k; mean over test cases, then mean ± std over runs):",
             "", "| arm | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]  # fmt: skip
    for arm in comparison.arms:
        recorded = [r["per_label"] for r in runs[arm.label] if "per_label" in r]
        cells = [_mean_std([p[m][k] for p in recorded if len(p.get(m, [])) > k])
                 for m in metrics for k in range(labels)]  # fmt: skip
        lines.append(f"| {arm.label} | " + " | ".join(cells) + " |")
    return lines


def _figure_lines(out_dir: Path, figures: str | None) -> list[str]:
    """Draw the pictures (:func:`lmttm_monai.experiments.figures.write_figures`) and link them from results.md's folder."""
    from lmttm_monai.experiments.figures import MissingMatplotlibError, write_figures

    try:
        pictures, notes = write_figures(out_dir, figures)
    except MissingMatplotlibError as e:
        if figures:
            raise
        return [f"Figures not drawn: {e}."]
    lines = []
    for caption, path in pictures:
        # relative: results.md and its pictures can be moved together (docs/ and docs/figures/)
        link = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()
        lines += [f"**{caption}**", "", f"![{caption}]({link})", ""]
    return lines + notes


def _seeds(seeds) -> list[int]:
    """``"0,1,2"``, one seed (``0``), or a sequence (fire passes ``--seeds 0,1`` as a tuple)."""
    try:
        chosen = [int(s) for s in comma_list(seeds)]
    except ValueError:
        chosen = []
    if not chosen:
        raise ResultsError(f"seeds must be a count or comma-separated integers (0,1,2), got {seeds!r}")
    return chosen


def _majority_line(overrides: dict) -> str:
    """The test split's majority-class rate: an ACC at it can mean the minority classes are never predicted."""
    try:
        name, _, labels = test_labels(overrides)
    except Exception as e:  # the table is still worth writing without it
        return f"Majority-class rate of the test split: not computed ({e})."
    counts = np.bincount(np.asarray(labels).reshape(-1))
    return (f"Majority-class rate of the {name} test split: {counts.max() / counts.sum():.4f} "
            f"({counts.max()} of {counts.sum()}); a test_acc at this rate may mean one class is always predicted.")  # fmt: skip


def parse_overrides(override) -> dict[str, str]:
    items = [override] if isinstance(override, str) else list(override or ())
    overrides = {}
    for item in items:
        for part in str(item).split(","):
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise ResultsError(f"override {part!r} is not key=value (for example epochs=50)")
            overrides[key.strip()] = value.strip()
    return overrides


def main(argv: list[str] | None = None) -> None:
    from lmttm_monai.utils.errors import fire_one_line

    # fire prints what a command returns: the path of results.md
    fire_one_line({"run": run, "table": table}, argv, "lmttm_monai.experiments.results", "python -m lmttm_monai.experiments.results")


if __name__ == "__main__":
    main()
