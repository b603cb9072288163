"""Offline mirrors of the checks MONAI model-zoo's CI runs on a contributed bundle (model-zoo ``ci/verify_bundle.py``).

Each check takes the bundle folder, raises :class:`BundleCheckError` (a ``ValueError``) whose message is one line
naming the file and the problem, and returns a one-line summary of what it verified. :func:`verify_bundle` runs
them in model-zoo's order::

    from lmttm_monai.bundle.zoo import verify_bundle
    for line in verify_bundle("bundles/lmttm"):
        print(line)

Differences from model-zoo, all because these checks must run offline and must not write into the bundle:

- model-zoo first downloads ``models/model.pt`` from ``large_files.yml``; here a missing weights file is reported
  (train the bundle or download the release) and ``require_weights=False`` skips the weights checks.
- the metadata schema is read from a local copy when one is given (``schema_file``, or ``LMTTM_BUNDLE_SCHEMA``),
  else downloaded into a temporary folder, never into the bundle's ``eval/``.
- the TorchScript export goes to a temporary file, not ``models/verify_model.ts``.
- model-zoo's check that a version is not already released (its ``model_info.json``) has no offline equivalent.
- two checks model-zoo does not have: the ``lmttm-monai`` pin in ``required_packages_version`` equals the installed
  package, and ``models/model.pt`` is a plain state dict that loads with ``strict=True`` into ``network_def``.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out
from monai.utils import OptionalImportError

import lmttm_monai
from lmttm_monai.utils.errors import UserError, root_cause

__all__ = [
    "BundleCheckError",
    "NOT_SCRIPTABLE",
    "SCHEMA_ENV",
    "load_metadata",
    "inference_config",
    "input_shape",
    "verify_bundle_directory",
    "verify_version_changes",
    "verify_metadata_format",
    "verify_required_packages",
    "verify_data_shape",
    "verify_weights",
    "verify_torchscript",
    "verify_bundle",
    "one_line",
    "describe_error",
]

# bundles that MONAI cannot script, with the reason (model-zoo keeps such a list, `exclude_verify_torchscript_list`;
# there the export is skipped, here it is traced instead)
NOT_SCRIPTABLE = {"mam_swinunetr": "MONAI's SwinUNETR cannot be scripted; traced export only"}
# environment variable naming a local copy of the metadata schema
SCHEMA_ENV = "LMTTM_BUNDLE_SCHEMA"
NET_ID = "network_def"
PACKAGE = "lmttm-monai"
# keys under which a checkpoint may nest its state dict (MONAI's CheckpointSaver with several objects: "model")
STATE_DICT_KEYS = ("model", "state_dict")
# how many missing / unexpected keys a message lists
SHOWN_KEYS = 3


class BundleCheckError(UserError, ValueError):
    """A bundle failed one of model-zoo's checks. The message is one line that names the file and the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: object, limit: int = 600) -> str:
    """``text`` with ANSI colour codes dropped and all whitespace runs (newlines too) collapsed to one space."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(error: BaseException) -> str:
    """``"Type: message"`` of the root cause of ``error``, on one line."""
    root = root_cause(error)
    return f"{type(root).__name__}: {one_line(root)}"


def load_metadata(bundle_dir: str | os.PathLike) -> dict:
    """``configs/metadata.json`` of the bundle as a dict; a missing or malformed file is a :class:`BundleCheckError`."""
    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        metadata = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise BundleCheckError(f"{meta_file} is missing: every bundle needs configs/metadata.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleCheckError(f"{meta_file} is not readable JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise BundleCheckError(f"{meta_file} must hold a JSON object, got {type(metadata).__name__}")
    return metadata


def inference_config(bundle_dir: str | os.PathLike) -> Path | None:
    """``configs/inference.json`` (or ``.yaml`` / ``.yml``, model-zoo accepts all three), ``None`` when absent."""
    for suffix in ("json", "yaml", "yml"):
        path = Path(bundle_dir) / "configs" / f"inference.{suffix}"
        if path.is_file():
            return path
    return None


def _require_inference_config(bundle_dir: str | os.PathLike) -> Path:
    path = inference_config(bundle_dir)
    if path is None:
        raise BundleCheckError(f"{Path(bundle_dir) / 'configs' / 'inference.json'} (or .yaml / .yml) is missing")
    return path


def _weights_file(bundle_dir: str | os.PathLike) -> Path:
    path = Path(bundle_dir) / "models" / "model.pt"
    if not path.is_file():
        # model-zoo would download it from large_files.yml here; these checks stay offline
        raise BundleCheckError(
            f"{path} is missing: train the bundle or download the release (python -m lmttm_monai.bundle.release download)"
        )
    return path


_OPERATORS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Pow: operator.pow,
    ast.FloorDiv: operator.floordiv,
}  # fmt: skip


def _resolve_dim(item: Any, n: int = 1, p: int = 1, any_size: int = 1) -> int:
    """One ``spatial_shape`` entry as model-zoo's fake input reads it: ``28``, ``"16*n"``, ``"2**p"``, ``"*"``."""
    if isinstance(item, int) and not isinstance(item, bool):
        return item
    if item == "*":
        return any_size
    names = {"n": n, "p": p}

    def value(node: ast.AST) -> int:
        # a tiny arithmetic evaluator: metadata is data, never code to eval()
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and not 0 <= right <= 32:  # a shape, not a way to stall the check
                raise ValueError(f"exponent {right} out of range in spatial_shape entry {item!r}")
            return _OPERATORS[type(node.op)](left, right)
        raise ValueError(f"unsupported spatial_shape entry {item!r} (use integers, n, p, +, -, *, ** or '*')")

    if not isinstance(item, str):
        raise ValueError(f"spatial_shape entries must be integers or strings, got {item!r}")
    return value(ast.parse(item, mode="eval"))


def input_shape(metadata: Mapping, n: int = 1) -> list[int]:
    """``[1, num_channels, *spatial_shape]`` of ``network_data_format.inputs.image``, ``"16*n"`` entries taken at
    ``n`` (model-zoo's fake input: batch 1, ``n = p = 1``)."""
    image = metadata["network_data_format"]["inputs"]["image"]
    return [1, int(image["num_channels"]), *(_resolve_dim(d, n=n) for d in image["spatial_shape"])]


def verify_bundle_directory(bundle_dir: str | os.PathLike, require_weights: bool = True) -> str:
    """The files model-zoo requires: ``LICENSE``, ``configs/metadata.json``, an inference config (``.json``,
    ``.yaml`` or ``.yml``) and, unless ``require_weights`` is False, ``models/model.pt``.

    Mirrors model-zoo's ``verify_bundle_directory``, which first downloads the weights named in
    ``large_files.yml``; offline, a missing ``models/model.pt`` asks to train the bundle or download the release.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleCheckError(f"{root} is not a bundle folder (no such directory)")
    for required in ("LICENSE", "configs/metadata.json"):
        if not (root / required).is_file():
            raise BundleCheckError(f"{root / required} is missing: model-zoo requires it in every bundle")
    config = _require_inference_config(root)
    found = ["LICENSE", "configs/metadata.json", f"configs/{config.name}"]
    if require_weights:
        _weights_file(root)
        found.append("models/model.pt")
    return "bundle directory: " + ", ".join(found) + " present"


def verify_version_changes(bundle_dir: str | os.PathLike) -> str:
    """``version`` is set in ``configs/metadata.json`` and is a key of its ``changelog``.

    Mirrors model-zoo's ``verify_version_changes`` (without its check against already released versions, which reads
    model-zoo's ``model_info.json``).
    """
    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    metadata = load_metadata(bundle_dir)
    version = metadata.get("version")
    if not version:
        raise BundleCheckError(f"{meta_file} has no 'version'")
    changelog = metadata.get("changelog")
    if not isinstance(changelog, Mapping):
        raise BundleCheckError(f"{meta_file} has no 'changelog' (an object of version -> what changed)")
    if version not in changelog:
        raise BundleCheckError(
            f"{meta_file}: version {version} has no changelog entry: "
            f"add \"{version}\": \"<what changed>\" to 'changelog'"
        )
    return f"version: {version} has a changelog entry"


def _schema_for(metadata: Mapping, schema_file: str | os.PathLike | None) -> Path | None:
    """The local schema to validate against, ``None`` when MONAI has to download the one the metadata names."""
    if schema_file is not None:
        return Path(schema_file)
    if os.environ.get(SCHEMA_ENV):
        return Path(os.environ[SCHEMA_ENV])
    return None


def verify_metadata_format(bundle_dir: str | os.PathLike, schema_file: str | os.PathLike | None = None) -> str:
    """``configs/metadata.json`` validates against the metadata schema, with ``monai.bundle.verify_metadata``.

    Mirrors model-zoo's ``verify_metadata_format``. The schema is ``schema_file`` if given, else the file named by
    the environment variable ``LMTTM_BUNDLE_SCHEMA``, else MONAI downloads the schema the metadata's
    ``schema`` url names into a temporary folder (this needs the internet; the summary says so).
    """
    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    metadata = load_metadata(bundle_dir)
    schema = _schema_for(metadata, schema_file)
    if schema is not None and not schema.is_file():
        raise BundleCheckError(f"{meta_file}: the schema file {schema} does not exist (set {SCHEMA_ENV} to a copy)")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # verify_metadata passes the schema through download_url, which warns about the missing hash of a local file
        warnings.filterwarnings("ignore", message="No hash value provided")
        target = schema if schema is not None else Path(tmp) / "schema.json"
        try:
            verify_metadata(meta_file=str(meta_file), filepath=str(target))
        except Exception as e:
            if isinstance(root_cause(e), OptionalImportError):
                raise BundleCheckError(f"{meta_file}: checking it needs jsonschema: pip install jsonschema") from e
            if schema is None and not target.is_file():
                raise BundleCheckError(
                    f"{meta_file}: could not download the schema {metadata.get('schema')} ({describe_error(e)}); "
                    f"set {SCHEMA_ENV} to a local copy"
                ) from e
            raise BundleCheckError(
                f"{meta_file} does not match the schema {schema or target.name}: {describe_error(e)}"
            ) from e
    where = schema if schema is not None else f"{metadata.get('schema')} (downloaded by MONAI)"
    return f"metadata format: valid against {where}"


def verify_required_packages(bundle_dir: str | os.PathLike) -> str:
    """``required_packages_version["lmttm-monai"]`` in ``configs/metadata.json`` equals ``lmttm_monai.__version__``.

    Not a model-zoo check: model-zoo installs ``required_packages_version`` before running a bundle, so a stale pin
    would install a package whose code no longer fits the configs. ``lmttm_monai.__version__`` is the one place the
    package version lives.
    """
    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    packages = load_metadata(bundle_dir).get("required_packages_version")
    if not isinstance(packages, Mapping) or PACKAGE not in packages:
        raise BundleCheckError(
            f"{meta_file}: required_packages_version does not pin {PACKAGE}: add \"{PACKAGE}\": "
            f"\"{lmttm_monai.__version__}\""
        )
    if str(packages[PACKAGE]) != lmttm_monai.__version__:
        raise BundleCheckError(
            f"{meta_file}: required_packages_version pins {PACKAGE} {packages[PACKAGE]}, but the installed "
            f"lmttm_monai.__version__ is {lmttm_monai.__version__}: set the pin to {lmttm_monai.__version__}"
        )
    return f"required packages: {PACKAGE} pin {lmttm_monai.__version__} matches lmttm_monai.__version__"


def verify_data_shape(bundle_dir: str | os.PathLike) -> str:
    """``network_def`` of the inference config, fed a random input of the metadata's input shape (batch 1, ``n = p =
    1``), returns the metadata's output channels and dtype: ``monai.bundle.verify_net_in_out``.

    Mirrors model-zoo's ``verify_data_shape``.
    """
    root = Path(bundle_dir)
    meta_file, config = root / "configs" / "metadata.json", _require_inference_config(root)
    metadata = load_metadata(root)
    try:
        shape = input_shape(metadata)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleCheckError(f"{meta_file}: network_data_format.inputs.image has no usable shape ({e})") from e
    try:
        # the configs compute bundle_root from the working directory: always give MONAI the real one
        verify_net_in_out(
            NET_ID, meta_file=str(meta_file), config_file=str(config), bundle_root=str(root), p=1, n=1, any=1
        )
    except Exception as e:
        raise BundleCheckError(
            f"{config}: {NET_ID} fails verify_net_in_out with the input {tuple(shape)} that {meta_file.name} "
            f"describes: {describe_error(e)}"
        ) from e
    return f"data shape: {NET_ID} maps {tuple(shape)} to the metadata's output channels and dtype"


def _load_state_dict(weights: Path) -> tuple[dict, str]:
    """The state dict in ``weights`` and the key it sits under (``""`` for a bare state dict)."""
    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        message = " ".join(str(root_cause(e)).split())
        unsupported = re.search(r"GLOBAL (\S+) was not an allowed global", message)
        if unsupported:
            raise BundleCheckError(
                f"{weights} needs pickle code to load (it holds {unsupported.group(1)}), so "
                "torch.load(weights_only=True) refuses it: re-save the state dict with "
                "torch.save(net.state_dict(), path)"
            ) from e
        # torch's own advice (retry with weights_only=False) is wrong for a damaged file: keep only the reason
        reason = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", message)
        raise BundleCheckError(
            f"{weights} is not a readable PyTorch file ({reason.group(1) if reason else describe_error(e)}): "
            "train again or download the release"
        ) from e
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                return dict(checkpoint[key]), key
        if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return dict(checkpoint), ""
        keys = ", ".join(map(str, list(checkpoint)[:SHOWN_KEYS]))
        raise BundleCheckError(
            f"{weights} holds a dict (keys {keys}, ...) that is neither a state dict nor one under "
            "'model' / 'state_dict'"
        )
    raise BundleCheckError(f"{weights} holds a {type(checkpoint).__name__}, not a state dict")


def _network(bundle_dir: Path, config: Path) -> Any:
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.read_meta(str(bundle_dir / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle_dir)
    try:
        return parser.get_parsed_content(NET_ID)
    except Exception as e:
        raise BundleCheckError(f"{config}: {NET_ID} cannot be built: {describe_error(e)}") from e


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def verify_weights(bundle_dir: str | os.PathLike) -> str:
    """``models/model.pt`` loads with ``torch.load(weights_only=True)`` (a state dict, bare or under ``"model"`` /
    ``"state_dict"``) and with ``strict=True`` into ``network_def`` built from the inference config.

    Not a model-zoo function: model-zoo's ``verify_torchscript`` only finds a mismatch as a long ignite traceback, and
    MONAI's ``load`` copies matching keys only (``copy_model_state``), so weights of another network would load
    silently. A file that needs pickle code (a whole ``nn.Module``, any custom class) is refused: loading it runs
    code from the file.
    """
    root = Path(bundle_dir)
    weights, config = _weights_file(root), _require_inference_config(root)
    state, _ = _load_state_dict(weights)
    net = _network(root, config)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    if not problems:
        for key, value in expected.items():
            if tuple(state[key].shape) != tuple(value.shape):
                problems.append(f"{key} has shape {tuple(state[key].shape)}, {NET_ID} expects {tuple(value.shape)}")
                break
    if problems:
        raise BundleCheckError(
            f"{weights} does not fit {NET_ID} of {config.name} (from another network?): " + "; ".join(problems)
        )
    try:
        net.load_state_dict(state, strict=True)
    except Exception as e:
        raise BundleCheckError(f"{weights} does not load into {NET_ID} of {config.name}: {describe_error(e)}") from e
    return f"weights: models/model.pt loads with weights_only=True and strict=True into {NET_ID} ({len(state)} tensors)"


def verify_torchscript(bundle_dir: str | os.PathLike, use_trace: bool | None = None, check_trace: bool = False) -> str:
    """``monai.bundle.ckpt_export`` of ``network_def`` with ``models/model.pt`` into a temporary file, then
    ``torch.jit.load`` of the result.

    Mirrors model-zoo's ``verify_torchscript``. Bundles in :data:`NOT_SCRIPTABLE` (model-zoo skips them, listed in its
    ``exclude_verify_torchscript_list``) are traced instead, on a random input of the metadata's shape (batch 1,
    ``"16*n"`` taken at ``n = 1``); ``use_trace`` forces either way. ``check_trace`` is ``torch.jit.trace``'s own
    check, off by default: it traces a second time to compare the graphs, five times the export's cost on SwinUNETR
    (whether an export computes what the network computes is a test's job: ``tests/bundle_helpers.py``).
    """
    root = Path(bundle_dir)
    weights, config = _weights_file(root), _require_inference_config(root)
    meta_file = root / "configs" / "metadata.json"
    reason = NOT_SCRIPTABLE.get(root.resolve().name)
    trace = bool(reason) if use_trace is None else use_trace
    _, key = _load_state_dict(weights)
    kwargs: dict[str, Any] = {}
    if trace:
        kwargs = {
            "use_trace": True,
            "input_shape": input_shape(load_metadata(root)),
            "converter_kwargs": {"check_trace": check_trace},
        }
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # tracing warns at every Python branch on a tensor value; the summary already says it was traced
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        exported = Path(tmp) / "model.ts"
        try:
            ckpt_export(
                NET_ID, filepath=str(exported), ckpt_file=str(weights), meta_file=str(meta_file),
                config_file=str(config), key_in_ckpt=key, bundle_root=str(root), **kwargs,
            )  # fmt: skip
            torch.jit.load(str(exported))
        except Exception as e:
            how = "traced" if trace else "scripted"
            hint = "" if trace else "; if the network cannot be scripted, list the bundle in zoo.NOT_SCRIPTABLE"
            raise BundleCheckError(
                f"{weights}: {NET_ID} of {config.name} cannot be exported ({how}) to TorchScript: "
                f"{describe_error(e)}{hint}"
            ) from e
    if trace:
        return f"torchscript: exported traced on {tuple(kwargs['input_shape'])} ({reason or 'use_trace=True'}), loads"
    return "torchscript: exported scripted, loads with torch.jit.load"


def verify_bundle(
    bundle_dir: str | os.PathLike,
    require_weights: bool = True,
    schema_file: str | os.PathLike | None = None,
    on_pass: Callable[[str], Any] | None = None,
) -> list[str]:
    """Run all checks in model-zoo's order (directory, version, metadata, data shape, TorchScript), with the package
    pin after the metadata and the weights before the export; return the one-line summary of each.

    Mirrors model-zoo's ``verify`` in its ``full`` mode. ``require_weights=False`` skips the weights file and the two
    checks that need it. ``on_pass`` is called with each summary as its check passes (the release command prints
    them as they come: the traced export takes a while). The first failure raises :class:`BundleCheckError`.
    """
    checks: list[Callable[[], str]] = [
        lambda: verify_bundle_directory(bundle_dir, require_weights=require_weights),
        lambda: verify_version_changes(bundle_dir),
        lambda: verify_metadata_format(bundle_dir, schema_file),
        lambda: verify_required_packages(bundle_dir),
        lambda: verify_data_shape(bundle_dir),
    ]
    if require_weights:
        checks += [lambda: verify_weights(bundle_dir), lambda: verify_torchscript(bundle_dir)]
    passed = []
    for check in checks:
        passed.append(check())
        if on_pass is not None:
            on_pass(passed[-1])
    return passed
