"""``lmttm-monai``: the project's command line, a thin layer over the bundles' own configs.

Every command runs the same config files as ``python -m monai.bundle`` (through MONAI's ``ConfigWorkflow``), takes
the same ``--key value`` overrides, and adds what a person at a terminal needs: the bundle found by name, an output
folder per run so nothing an earlier run wrote is replaced, override keys checked against the config, one-line
errors, and a one-line summary at the end. ``python -m monai.bundle`` stays the primary, documented path.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmttm_monai.utils.errors import UserError, quiet_warnings
from lmttm_monai.utils.outputs import as_bool
from lmttm_monai.utils.bundles import BundlesNotFoundError, bundle_names, bundles_dir
from lmttm_monai.utils.misc import comma_list

__all__ = ["CLIError", "find_bundle", "main"]

PROG = "lmttm-monai"
RUNS_ROOT = "runs"
# what each command reads, after the bundle's own configs/ folder
COMMAND_CONFIGS = {
    "train": ["train.json"],
    "evaluate": ["train.json", "evaluate.json"],
    "infer": ["inference.json"],
}
class CLIError(UserError):
    """A mistake the user can fix; its message is one line that says what and how."""


def _bundle_names() -> list[str]:
    try:
        return bundle_names()
    except BundlesNotFoundError:
        return []


def find_bundle(bundle: str | os.PathLike) -> Path:
    """A bundle folder: a path holding ``configs/metadata.json``, or the name of one of the installed bundles
    (:func:`lmttm_monai.utils.bundles_dir`)."""
    path = Path(bundle).expanduser()
    if (path / "configs" / "metadata.json").is_file():
        return path.resolve()
    if os.sep not in str(bundle):
        named = bundles_dir() / str(bundle)
        if (named / "configs" / "metadata.json").is_file():
            return named
    raise CLIError(
        f"no bundle {str(bundle)!r}: give a bundle folder (one holding configs/metadata.json) or one of "
        f"{', '.join(_bundle_names()) or '(none found)'}"
    )


def _config_files(root: Path, command: str, overlays: Any) -> list[str]:
    overlays = comma_list(overlays)
    files = [root / "configs" / name for name in COMMAND_CONFIGS[command]]
    for overlay in overlays:
        path = Path(overlay) if Path(overlay).is_file() else root / "configs" / str(overlay)
        if not path.is_file():
            available = sorted(p.name for p in (root / "configs").glob("*.json"))
            raise CLIError(f"no overlay {overlay!r} in {root / 'configs'}: choose from {', '.join(available)}")
        files.append(path)
    return [str(f) for f in files]


def _check_override_keys(parser, overrides: dict) -> None:
    """Reject override keys the configs do not have, as a typo would otherwise be added silently.

    ``a#b#c`` is accepted when it exists, or when ``a#b`` is a component (a dict with ``_target_``): MONAI passes
    new keys of a component to its constructor (``--train#trainer#epoch_length 2``).
    """
    top_level = sorted(k for k in parser.config if not k.startswith("_"))
    for key in overrides:
        if key in parser:
            continue
        parent = key.rsplit("#", 1)[0] if "#" in key else None
        if parent is not None and parent in parser and isinstance(parser[parent], dict) and "_target_" in parser[parent]:
            continue
        close = difflib.get_close_matches(key, top_level, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CLIError(f"unknown override key {key!r}{hint}; this bundle's keys are: {', '.join(top_level)}")


def _resumable_run(root: Path, overlays: list[str]) -> Path:
    """The latest ``lmttm-monai train`` run of this bundle with these overlays that left a ``checkpoint.pt``."""
    runs = []
    for started in Path(RUNS_ROOT, root.name).glob("*-train*/run.json"):
        try:
            same = json.loads(started.read_text()).get("overlays", []) == overlays
        except (OSError, ValueError):
            continue
        checkpoint = started.parent / "models" / "checkpoint.pt"
        if same and checkpoint.is_file():
            runs.append(checkpoint)
    if not runs:
        raise CLIError(
            f"--resume: no earlier `{PROG} train {root.name}` run with overlays {overlays or 'none'} left a "
            f"checkpoint under {Path(RUNS_ROOT, root.name)}; give its folder with --output_dir"
        )
    return max(runs, key=lambda p: p.stat().st_mtime).parents[1].resolve()


def _run_dir(root: Path, command: str, output_dir: str | None, overwrite: bool, resume: bool = False) -> Path:
    if resume:  # continue in the earlier run's folder: its checkpoint, its log
        run_dir = Path(output_dir).expanduser() if output_dir is not None else None
        if run_dir is not None and not (run_dir / "models" / "checkpoint.pt").is_file():
            raise CLIError(f"--resume: {run_dir / 'models' / 'checkpoint.pt'} does not exist, so there is nothing to resume")
        return run_dir.resolve() if run_dir is not None else None  # None: the caller picks the latest run
    if output_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(RUNS_ROOT) / root.name / f"{stamp}-{command}"
        suffix = 1
        while run_dir.exists():  # two runs in the same second
            suffix += 1
            run_dir = Path(RUNS_ROOT) / root.name / f"{stamp}-{command}-{suffix}"
    else:
        run_dir = Path(output_dir).expanduser()
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise CLIError(f"{run_dir} already holds an earlier run's outputs: pick another --output_dir or pass --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir.resolve()


def _latest_checkpoint(root: Path, overlays: list[str] | None = None) -> Path:
    """The checkpoint evaluation and inference use by default: that of the latest finished ``lmttm-monai train`` run
    with the same overlays (a TTM run's weights do not fit the LMTTM network), else the bundle's own
    ``models/model.pt`` (a downloaded release, or a ``python -m monai.bundle`` training)."""
    overlays = overlays or []
    runs = []
    for summary in Path(RUNS_ROOT, root.name).glob("*-train*/summary.json"):  # written when a run finished
        ckpt = summary.parent / "models" / "model.pt"
        try:
            same = json.loads(summary.read_text()).get("overlays", []) == overlays
        except (OSError, ValueError):  # an unreadable summary: not a run to trust
            continue
        if same and ckpt.is_file():
            runs.append(ckpt)
    runs.sort(key=lambda p: p.stat().st_mtime)
    return runs[-1].parent.resolve() if runs else root / "models"


def _overlay_names(command: str, files: list[str]) -> list[str]:
    """The overlays of a run, by file name: its config files after the command's own."""
    return [Path(f).name for f in files[len(COMMAND_CONFIGS[command]):]]


class _Tee:
    """Standard output that is also written to the run's ``log.txt``.

    Every log line of a bundle run goes to standard output (the bundle's logging.conf and MONAI's own loggers,
    several of which do not propagate to the root logger), while progress bars go to standard error; so the log
    file is a copy of standard output, without the progress bars. Installed before the workflow is built, because
    logging handlers keep the stream they were given.
    """

    def __init__(self, stream, path: Path, append: bool = False) -> None:
        # a run folder holds one run; a resumed run continues its log
        self.stream, self.file = stream, open(path, "a" if append else "w", encoding="utf-8")

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.file.flush()
        self.stream.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ... of the real stream
        return getattr(self.stream, name)


class _EngineErrorEcho(logging.Filter):
    """Drops ignite's log line of the exception that ends a run: the command's last line says it, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Engine run is terminating due to exception")


def _say_errors_once() -> None:
    """Put :class:`_EngineErrorEcho` on every log handler the bundle's logging.conf set up (not with --debug)."""
    from lmttm_monai.utils.errors import debug_enabled

    if debug_enabled():
        return
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    for handler in {h for logger in loggers for h in logger.handlers}:
        if not any(isinstance(f, _EngineErrorEcho) for f in handler.filters):
            handler.addFilter(_EngineErrorEcho())


def _metric_text(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def _run(command: str, bundle: str, overlays: Any, output_dir: str | None, overwrite: bool, overrides: dict) -> str:
    from monai.bundle import ConfigParser

    root = find_bundle(bundle)
    files = _config_files(root, command, overlays)
    parser = ConfigParser()
    parser.read_config(files)
    _check_override_keys(parser, overrides)
    resume = command == "train" and as_bool(overrides.get("resume", False), "resume")
    final_dir = None
    if not resume and output_dir is not None:
        target = Path(output_dir).expanduser()
        if target.is_dir() and any(target.iterdir()) and overwrite:
            # replace an earlier run only once this one has succeeded: run beside it, swap at the end
            final_dir = target.resolve()
            output_dir = str(final_dir.parent / f".{final_dir.name}.incomplete-{os.getpid()}")
    new = resume is False and (output_dir is None or not Path(output_dir).expanduser().exists())
    run_dir = _run_dir(root, command, output_dir, overwrite, resume) or _resumable_run(root, _overlay_names(command, files))
    try:
        return _run_in(command, root, files, run_dir, overwrite, overrides, resume, final_dir)
    except BaseException as error:
        _after_failure(run_dir, new, final_dir, error)
        raise


_BOOKKEEPING = {"run.json", "config.json", "log.txt"}


def _after_failure(run_dir: Path, new: bool, final_dir: Path | None, error: BaseException) -> None:
    """What a failed run leaves: nothing where it would have replaced an earlier run (that run's files stay as they
    were) or made a new folder holding only bookkeeping; otherwise its log.txt ends with the error."""
    from lmttm_monai.utils.errors import one_line

    if final_dir is not None or (new and {p.name for p in run_dir.iterdir()} <= _BOOKKEEPING):
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in (run_dir.parent, run_dir.parent.parent) if run_dir.parent.parent.name == RUNS_ROOT else ():
            with contextlib.suppress(OSError):  # runs/BUNDLE and runs/, made for this run and now empty
                parent.rmdir()
        return
    with open(run_dir / "log.txt", "a", encoding="utf-8") as log:
        log.write(f"{PROG}: error: {one_line(error)}\n")


def _swap_in(run_dir: Path, final_dir: Path) -> None:
    """Put a finished run in ``final_dir``, replacing the earlier run there, and make its files name that folder."""
    old = final_dir.parent / f".{final_dir.name}.replaced-{os.getpid()}"
    final_dir.rename(old)
    run_dir.rename(final_dir)
    shutil.rmtree(old, ignore_errors=True)
    for name in ("config.json", "summary.json"):
        path = final_dir / name
        if path.is_file():
            path.write_text(path.read_text().replace(str(run_dir), str(final_dir)))


def _run_in(
    command: str, root: Path, files: list[str], run_dir: Path, overwrite: bool, overrides: dict, resume: bool,
    final_dir: Path | None,
) -> str:
    from monai.bundle import ConfigParser, ConfigWorkflow

    (run_dir / "run.json").write_text(json.dumps({"command": command, "overlays": _overlay_names(command, files)}) + "\n")
    # overwrite reaches the configs' own guard too (lmttm_monai.utils.outputs), e.g. for a --ckpt_dir that holds a model.pt
    settings = {"bundle_root": str(root), "output_dir": str(run_dir), "overwrite": bool(overwrite), **overrides}
    if command == "train":
        settings.setdefault("ckpt_dir", str(run_dir / "models"))
    else:
        settings.setdefault("ckpt_dir", str(_latest_checkpoint(root, _overlay_names(command, files))))
    ckpt = Path(settings["ckpt_dir"]) / "model.pt"
    stdout = sys.stdout
    sys.stdout = tee = _Tee(stdout, run_dir / "log.txt", append=resume)
    try:
        workflow = ConfigWorkflow(
            config_file=files,
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=str(root / "configs" / "logging.conf"),
            workflow_type="infer" if command == "infer" else "train",
            **settings,
        )
        _say_errors_once()
        ConfigParser.export_config_file(workflow.parser.config, str(run_dir / "config.json"), indent=4)
        started = time.time()
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        seconds = time.time() - started
        summary = {**_summary(command, workflow.parser, seconds), "overlays": _overlay_names(command, files)}
    finally:
        sys.stdout = stdout
        tee.file.close()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=4) + "\n")
    if final_dir is not None:
        _swap_in(run_dir, final_dir)
        ckpt = Path(str(ckpt).replace(str(run_dir), str(final_dir)))
        run_dir = final_dir
    where = f"outputs in {run_dir}"
    if command == "train":
        where += f" (checkpoint {ckpt})"
    else:
        where += f" (weights {ckpt})"
    return f"{PROG} {command} {root.name}: {summary['text']} in {seconds:.0f} s; {where}"


def _summary(command: str, parser, seconds: float) -> dict:
    if command == "train":
        trainer = parser.get_parsed_content("train#trainer")
        evaluator = parser.get_parsed_content("validate#evaluator")
        state = evaluator.state
        name = getattr(state, "key_metric_name", None) or "key metric"
        text = f"{trainer.state.epoch} epochs"
        if state.best_metric_epoch is not None and state.best_metric_epoch > 0:
            text += f", best {name} {state.best_metric:.4f} (epoch {state.best_metric_epoch})"
        return {"text": text, "epochs": trainer.state.epoch, "best_metric": state.best_metric,
                "best_metric_epoch": state.best_metric_epoch, "key_metric": name, "seconds": seconds}  # fmt: skip
    evaluator = parser.get_parsed_content("validate#evaluator" if command == "evaluate" else "evaluator")
    metrics = {k: float(v) if isinstance(v, (int, float)) else str(v) for k, v in evaluator.state.metrics.items()}
    if command == "evaluate":
        return {"text": _metric_text(metrics) or "evaluated", "metrics": metrics, "seconds": seconds}
    n = len(evaluator.data_loader.dataset)
    return {"text": f"{n} input{'s' if n != 1 else ''} inferred", "items": n, "seconds": seconds}


class Commands:
    """Memory-based networks for MONAI (LMTTM, TTM, Memory-Attention, SALSTM / LSTMSA) and their bundles.

    Every command runs a bundle's own configs, the same as `python -m monai.bundle`, and takes the same
    `--key value` overrides. Each run writes into its own folder under runs/BUNDLE/ (or --output_dir).
    Errors end with one line saying what is wrong; --debug shows the full traceback.
    """

    def list(self) -> str:
        """List the networks (registry names) and the bundles.

        Example: lmttm-monai list
        """
        from lmttm_monai.networks import NETWORKS

        lines = ["networks (lmttm_monai.networks.get_network(NAME, ...)):"]
        for name in NETWORKS.names:
            lines.append(f"  {name:20s} {NETWORKS.components[name].description}")
        lines.append("bundles (lmttm-monai train|evaluate|infer NAME):")
        for name in _bundle_names():
            meta = json.loads((find_bundle(name) / "configs" / "metadata.json").read_text())
            lines.append(f"  {name:20s} v{meta['version']}  {meta.get('name', '')}")
        return "\n".join(lines)

    def train(self, bundle: str, overlays=None, output_dir=None, overwrite=False, **overrides) -> str:
        """Train a bundle: configs/train.json (+ --overlays), the checkpoint goes to the run folder's models/.

        Every epoch leaves models/checkpoint.pt; --resume true continues a killed run (the latest with the same
        overlays, or the one in --output_dir) after its last finished epoch, or says that it had finished.

        Example: lmttm-monai train lmttm --dataset_dir ~/data/medmnist --epochs 10
                 lmttm-monai train lmttm --overlays ttm.json
                 lmttm-monai train lmttm --resume true
        """
        return _run("train", bundle, overlays, output_dir, overwrite, overrides)

    def evaluate(self, bundle: str, overlays=None, output_dir=None, overwrite=False, **overrides) -> str:
        """Evaluate a checkpoint on the test split: train.json + evaluate.json (+ --overlays).

        The checkpoint is --ckpt_dir's model.pt, else the latest `lmttm-monai train` run's, else the bundle's
        models/model.pt; the summary says which.
        Example: lmttm-monai evaluate lmttm --dataset_dir ~/data/medmnist
        """
        return _run("evaluate", bundle, overlays, output_dir, overwrite, overrides)

    def infer(self, bundle: str, input=None, overlays=None, output_dir=None, overwrite=False, **overrides) -> str:  # noqa: A002
        """Infer with a bundle: inference.json (+ --overlays) on --input FOLDER or one FILE (default: the test split).

        A folder's unreadable files are skipped and reported, the rest inferred. Checkpoint as for evaluate.
        Example: lmttm-monai infer mam_swinunetr --input path/to/volumes
                 lmttm-monai infer lmttm --input scan.nii.gz
        """
        if input is not None:
            overrides["input_dir"] = str(Path(str(input)).expanduser().resolve())
        return _run("infer", bundle, overlays, output_dir, overwrite, overrides)

    def export(self, bundle: str, filepath=None, ckpt_dir=None, overlays=None, **overrides) -> str:
        """Export a checkpoint to TorchScript with MONAI's ckpt_export (traced for bundles that cannot be scripted).

        Example: lmttm-monai export lmttm --filepath lmttm.ts
        """
        from monai.bundle import ckpt_export

        from lmttm_monai.bundle import zoo

        root = find_bundle(bundle)
        files = _config_files(root, "infer", overlays)
        ckpt = Path(ckpt_dir).expanduser() if ckpt_dir else _latest_checkpoint(root, _overlay_names("infer", files))
        if not (ckpt / "model.pt").is_file():
            raise CLIError(f"{ckpt / 'model.pt'} does not exist: train the bundle first, or pass --ckpt_dir")
        target = Path(filepath).expanduser() if filepath else ckpt / "model.ts"
        traced = root.name in zoo.NOT_SCRIPTABLE
        extra = {"use_trace": True, "input_shape": zoo.input_shape(zoo.load_metadata(root))} if traced else {}
        ckpt_export(
            net_id="network_def", filepath=str(target), ckpt_file=str(ckpt / "model.pt"),
            meta_file=str(root / "configs" / "metadata.json"), config_file=files, bundle_root=str(root),
            **extra, **overrides,
        )  # fmt: skip
        return f"{PROG} export {root.name}: {'traced' if traced else 'scripted'} {ckpt / 'model.pt'} to {target}"

    def verify(self, bundle: str, require_weights: bool = False) -> None:
        """Run model-zoo's checks that work offline (python -m lmttm_monai.bundle.release verify): files, version, metadata,
        pins, network in/out; with --require_weights also the weights and their TorchScript export.

        Example: lmttm-monai verify lmttm
        """
        from lmttm_monai.bundle import release

        release.verify(str(find_bundle(bundle)), require_weights=require_weights)

    def package(self, bundle: str, **options) -> None:
        """Check a bundle and write its release zip (python -m lmttm_monai.bundle.release package).

        Example: lmttm-monai package lmttm --output_dir dist --repo OWNER/REPO
        """
        from lmttm_monai.bundle import release

        release.package(str(find_bundle(bundle)), **options)

    def download(self, name: str, **options) -> None:
        """Download and unpack a released bundle (python -m lmttm_monai.bundle.release download).

        Example: lmttm-monai download lmttm --version 0.2.0 --repo OWNER/REPO/lmttm_v0.2.0 --bundle_dir downloaded
        """
        from lmttm_monai.bundle import release

        release.download(name=name, **options)


    def label(self, action: str, studies=None, models="all", python=None, bundles_dir=None, host=None, port=None):
        """Serve the bundles with MONAI Label (`label serve`), or print the command (`label command`).

        MONAI Label runs in its own environment (bash .ci/label-install.sh ~/label-venv; docs/monailabel.md): name
        its interpreter with --python, or set LMTTM_LABEL_PYTHON. --models all, or names separated by commas.
        Example: lmttm-monai label serve --studies ~/studies --python ~/label-venv/bin/python
                 lmttm-monai label command --studies ~/studies
        """
        import shlex
        import subprocess

        from lmttm_monai.apps.monailabel import check_studies, start_command

        if action not in ("serve", "command"):
            raise CLIError(f"unknown label action {action!r}; use `label serve` or `label command`")
        if studies is None:
            raise CLIError("label needs --studies DIR, the folder of images to serve")
        interpreter = python or os.environ.get("LMTTM_LABEL_PYTHON")
        launcher = (str(Path(interpreter).expanduser()), "-m", "monailabel.main") if interpreter else ("monailabel",)
        studies = str(Path(str(studies)).expanduser())
        if not isinstance(models, str):  # fire reads --models a,b as a tuple
            models = ",".join(str(m) for m in models)
        argv = start_command(studies, models, bundles_dir, host, port, launcher=launcher)
        if action == "command":
            return shlex.join(argv)
        if interpreter is None or not Path(launcher[0]).is_file():
            raise CLIError(
                f"MONAI Label's interpreter {'is not set' if interpreter is None else launcher[0] + ' does not exist'}: "
                "build its environment with `bash .ci/label-install.sh ~/label-venv` and pass "
                "--python ~/label-venv/bin/python (or set LMTTM_LABEL_PYTHON)"
            )
        try:
            check_studies(studies)
        except ValueError as error:
            raise CLIError(str(error)) from None
        code = subprocess.call(argv)  # until the user stops it (Ctrl-C)
        if code not in (0, -2, 130):  # -2 / 130: stopped with Ctrl-C
            raise CLIError(f"the MONAI Label server exited with status {code}; its log: {Path(argv[3]) / 'logs' / 'app.log'}")
        return None


def _usage(commands: list[str]) -> str:
    lines = [f"usage: {PROG} COMMAND [ARGS] [--key value ...] [--debug]", "", *Commands.__doc__.strip().splitlines(), ""]
    lines.append("commands:")
    for name in commands:
        lines.append(f"  {name:10s} {getattr(Commands, name).__doc__.strip().splitlines()[0]}")
    lines.append(f"\n{PROG} COMMAND --help shows a command's options and an example.")
    return "\n".join(line.rstrip() if not line.startswith("    ") else line[4:] for line in lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lmttm-monai`` console script."""
    from lmttm_monai.utils.errors import debug_enabled, fire_one_line

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or debug_enabled()
    args = [a for a in args if a != "--debug"]
    commands = [name for name in dir(Commands) if not name.startswith("_")]
    if not args or args[0] in ("--help", "-h"):
        print(_usage(commands))
        return
    if ("--help" in args or "-h" in args) and "--" not in args:
        # fire's own form: without the separator, `train --help` first fails for the missing BUNDLE (exit 2)
        args = [a for a in args if a not in ("--help", "-h")] + ["--", "--help"]
    if not args[0].startswith("-") and args[0] not in commands:
        close = difflib.get_close_matches(args[0], commands, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"{PROG}: error: unknown command {args[0]!r}{hint}; commands: {', '.join(commands)}", file=sys.stderr)
        sys.exit(2)
    if debug:
        from lmttm_monai.utils.errors import DEBUG_ENV

        os.environ[DEBUG_ENV] = "1"  # the bundle configs' exception hook then keeps the traceback too
    else:
        quiet_warnings()
    # fire prints a command's returned text (the summary line) itself; the console script's wrapper passes main's
    # return value to sys.exit, so nothing is returned
    fire_one_line(Commands, args, PROG, debug=debug)


if __name__ == "__main__":
    main()
