"""Train a bundle's shipped model and keep everything that describes it in step: ``python -m lmttm_monai.bundle.ship``.

One command, for maintainers. It trains the bundle's default configuration with one seed (the bundle's own
``train.json`` through :func:`lmttm_monai.experiments.results.run_one`: a killed run continues, a finished one is kept),
scores it on the test split with the bundle's ``evaluate.json``, then writes together:

- ``bundles/NAME/models/model.pt``: the trained state dict (fp32, checked to load into ``inference.json``'s network);
- ``docs/results/shipped/NAME.json``: the run's record (metrics, validation curve, commands, commit, seconds,
  threads) with the file's sha256;
- ``configs/metadata.json``: the next patch version, its changelog line and ``eval_metrics`` (the run's test scores);
- ``large_files.yml``: the release url of that version and the sha256 of the file;
- the model card's "Shipped model" section, and the version in the download commands of the card and README.md.

    python -m lmttm_monai.bundle.ship salstm --seed 2
    python -m lmttm_monai.bundle.ship salstm --seed 2 --out runs/ship/salstm --replace true   # retrain: replace the weights
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from lmttm_monai.experiments import results
from lmttm_monai.utils.bundles import bundles_dir
from lmttm_monai.utils.errors import UserError
from lmttm_monai.utils.outputs import as_bool, atomic_path

__all__ = ["CARD_END", "CARD_START", "MAX_BYTES", "RECORDS", "card_section", "check_weights", "main", "ship"]

RECORDS = Path("docs") / "results" / "shipped"  # one NAME.json per bundle, relative to the repository
MAX_BYTES = 30 * 2**20  # the project's limit for one shipped file
CARD_START = "<!-- shipped-model: written by python -m lmttm_monai.bundle.ship, do not edit by hand -->"
CARD_END = "<!-- /shipped-model -->"
CARD_ANCHOR = "## Results"  # the section goes right before the card's results


class ShipError(UserError):
    """A ship command that cannot run as asked; the message says why."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights(path: Path, bundle_root: Path) -> int:
    """Refuse weights that are not what a bundle ships: a state dict of fp32 tensors, at most :data:`MAX_BYTES`,
    loading strictly into the network of the bundle's ``inference.json``. Returns the number of tensors."""
    import torch
    from monai.bundle import ConfigParser

    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ShipError(f"{path}: {size / 2**20:.1f} MB, more than the {MAX_BYTES / 2**20:.0f} MB a shipped model may take")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ShipError(f"{path}: not a state dict of tensors")
    not_fp32 = sorted(k for k, v in state.items() if v.is_floating_point() and v.dtype != torch.float32)
    if not_fp32:
        raise ShipError(f"{path}: {len(not_fp32)} tensors are not fp32 (e.g. {not_fp32[0]})")
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_root)
    parser.get_parsed_content("network_def").load_state_dict(state, strict=True)
    return len(state)


def _number(name: str, value: float) -> str:
    """A metric the way the cards write it: a score below 1 as .xxxx, a distance with 2 decimals."""
    return f"{value:.4f}".replace("0.", ".", 1) if abs(value) < 1 and "hd" not in name else f"{value:.2f}"


def _next_version(version: str) -> str:
    major, minor, patch = (int(p) for p in version.split("."))
    return f"{major}.{minor}.{patch + 1}"


def _machine_folders(repo_root: Path, out_dir: Path, name: str, data_folder: str, overrides: dict) -> dict[str, str]:
    """This machine's folders in a run's record, longest first, and what a user types instead."""
    from lmttm_monai.data import default_dataset_dir

    data = Path(overrides.get("dataset_dir") or default_dataset_dir(data_folder)).expanduser()
    folders = {
        str(repo_root) + os.sep: "",
        str(out_dir.resolve()): f"runs/ship/{name}", str(out_dir): f"runs/ship/{name}",
        str(data.resolve()): f"$MONAI_DATA_DIRECTORY/{data_folder}", str(data): f"$MONAI_DATA_DIRECTORY/{data_folder}",
    }  # fmt: skip
    return dict(sorted(folders.items(), key=lambda item: -len(item[0])))


def _portable(value, replacements: dict[str, str]):
    """``value`` with this machine's folders replaced by the ones a user types (the repository's relative paths,
    the default ``runs/`` folder), so a committed record names no absolute path."""
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_portable(v, replacements) for v in value]
    if isinstance(value, dict):
        return {_portable(k, replacements): _portable(v, replacements) for k, v in value.items()}
    return value


def card_section(record: dict) -> str:
    """The model card's "Shipped model" section, from the shipped record alone."""
    name = record["bundle"]
    scores = ", ".join(f"{k} {_number(k, v)}" for k, v in record["metrics"].items())
    overrides = ", ".join(f"{k}={v}" for k, v in record["overrides"].items())
    recipe = f"with {overrides}" if overrides else "(the default configuration)"
    minutes = f"{record['seconds'] / 60:.0f} minutes on {record['threads']} CPU thread{'s' * (record['threads'] > 1)}"
    if record.get("resumed_after_epochs"):
        minutes = f"resumed after epochs {record['resumed_after_epochs']}, the last piece {minutes}"
    commit = (record.get("commit") or "unknown")[:7]
    return "\n".join([
        CARD_START,
        "## Shipped model",
        "",
        f"`models/model.pt` ({record['bytes'] / 2**20:.1f} MB, sha256 `{record['sha256'][:16]}…`) is the "
        f"{record['arm']} network trained {recipe} with seed {record['seed']} by "
        f"`python -m lmttm_monai.bundle.ship {name} --seed {record['seed']}` at commit {commit} ({minutes}). "
        f"Test split: {scores}; these are `eval_metrics` in `configs/metadata.json`, re-scored by the tests. "
        f"Record: `docs/results/shipped/{name}.json`. Evaluation and inference use it when no `--ckpt_dir` is given.",
        CARD_END,
    ])  # fmt: skip


def write_card_section(card: Path, section: str) -> None:
    text = card.read_text()
    block = re.compile(re.escape(CARD_START) + r".*?" + re.escape(CARD_END), re.S)
    if block.search(text):
        text = block.sub(lambda _: section, text)
    elif CARD_ANCHOR in text:
        text = text.replace(CARD_ANCHOR, f"{section}\n\n{CARD_ANCHOR}", 1)
    else:
        raise ShipError(f"{card}: no '{CARD_ANCHOR}' heading to put the shipped-model section before")
    with atomic_path(card) as tmp:
        Path(tmp).write_text(text)


def meta_path(bundle: Path) -> Path:
    return bundle / "configs" / "metadata.json"


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=4) + "\n")


def ship(
    name: str, seed: int = 0, out: str | None = None, jobs: int = 1, override=(), replace=False, repo: str | None = None
) -> str:
    """Train (or take the finished run in ``out``) and ship it as bundle ``name``'s model.

    Args:
        name: the bundle (``lmttm``, ``salstm``, ``mam_swinunetr``, ``mam_unetr``); its default network is trained.
        seed: the training seed.
        out: the run folder (default ``runs/ship/NAME``); rerun to continue a killed training.
        jobs: the share of the CPU cores the training takes (``cores // jobs`` threads).
        override: ``key=value`` config overrides, recorded and named in the card (a shipped model has none).
        replace: replace a shipped ``model.pt`` that differs (retraining); without it such a file is kept.
        repo: the repository to write into (default: the source tree of the editable install).
    """
    from lmttm_monai.bundle.release import set_version

    repo_root = Path(repo).expanduser().resolve() if repo else bundles_dir().parent
    if not (repo_root / ".git").exists():
        raise ShipError(f"{repo_root} is not a git checkout: ship writes into the repository, pass --repo PATH")
    bundle = repo_root / "bundles" / name
    if not (bundle / "configs" / "metadata.json").is_file():
        raise ShipError(f"no bundle {name!r} under {repo_root / 'bundles'}")
    comparison = results.COMPARISONS.get(name)
    if comparison is None:
        raise ShipError(f"bundle {name!r} has no training recipe in lmttm_monai.experiments.results.COMPARISONS")
    arm = comparison.arms[0]  # the bundle's default network
    out_dir = Path(out or Path("runs") / "ship" / name).expanduser()
    overrides = results.parse_overrides(override)
    threads = max(1, (os.cpu_count() or 1) // max(1, int(jobs)))
    record = results.run_one(comparison, arm, int(seed), out_dir, overrides, threads, bundles=repo_root / "bundles")
    run_dir = out_dir / arm.slug / f"seed{int(seed)}"
    weights = run_dir / "models" / "model.pt"
    if not weights.is_file():
        raise ShipError(f"{weights} does not exist: the run in {run_dir} kept no model")
    tensors = check_weights(weights, bundle)

    target = bundle / "models" / "model.pt"
    digest = sha256(weights)
    record_path = repo_root / RECORDS / f"{name}.json"
    if target.is_file() and sha256(target) == digest and record_path.is_file():
        if json.loads(record_path.read_text()).get("sha256") == digest:  # a rerun: nothing new to ship
            return f"{target} is already this run's model ({name} {json.loads(meta_path(bundle).read_text())['version']})"
    if target.is_file() and sha256(target) != digest and not as_bool(replace, "replace"):
        raise ShipError(f"{target} holds other weights: pass --replace true to ship this run's instead")
    target.parent.mkdir(exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(weights, tmp)

    meta = json.loads(meta_path(bundle).read_text())
    version = _next_version(meta["version"])
    metrics = {k: round(float(v), 4) for k, v in record["metrics"].items()}
    shipped = {
        "bundle": name, "version": version, "file": "models/model.pt", "sha256": digest,
        "bytes": weights.stat().st_size, "tensors": tensors,
        **_portable(record, _machine_folders(repo_root, out_dir, name, comparison.data_folder, overrides)),
    }  # fmt: skip
    _write_json(record_path, shipped)

    scores = ", ".join(f"{k} {_number(k, v)}" for k, v in metrics.items())
    meta["eval_metrics"] = metrics
    _write_json(meta_path(bundle), meta)
    write_card_section(bundle / "docs" / "README.md", card_section(shipped))
    set_version(str(bundle), version, f"shipped model: {arm.label} seed {seed} (test {scores})", repo=str(repo_root))
    return f"shipped {target} ({name} {version}: {scores}); record {record_path}"


def main(argv: list[str] | None = None) -> None:
    from lmttm_monai.utils.errors import fire_one_line

    fire_one_line(ship, argv, "lmttm_monai.bundle.ship", "python -m lmttm_monai.bundle.ship")


if __name__ == "__main__":
    main()
