"""Helpers shared by the bundle tests: run ``python -m monai.bundle`` in a subprocess, read its outputs."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from conftest import REPO_ROOT


def bundle(*args: str, cwd: Path = REPO_ROOT, module: str = "monai.bundle", env: dict | None = None) -> str:
    """Run ``python -m monai.bundle ARGS`` and return its output; fail the test with the output on error."""
    result = run_module(*args, cwd=cwd, module=module, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def run_module(
    *args: str, cwd: Path = REPO_ROOT, module: str = "monai.bundle", env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m MODULE ARGS`` and return the finished process, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=1200,
    )


def config_list(*files: str) -> str:
    """The ``--config_file`` value that merges ``files`` left to right."""
    return json.dumps(list(files))


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if row]


def raises_naming(pattern: str, transform, data: dict) -> None:
    """``transform(data)`` fails, and the error (or the one MONAI's ``Compose`` wrapped) matches ``pattern``."""
    with pytest.raises(Exception) as info:
        transform(data)
    error, messages = info.value, []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    assert any(re.search(pattern, m) for m in messages), messages


def dice(seg: np.ndarray, ref: np.ndarray, label: int) -> float:
    """Dice of one label value between two label maps."""
    a, b = seg == label, ref == label
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def assert_export_matches_eager(
    models: Path, meta_file: Path, configs: list[str], x: torch.Tensor, *args: str
) -> None:
    """``ckpt_export`` the checkpoint ``models/model.pt`` (extra ``args`` such as ``--use_trace True`` go to it) and
    check that the exported model's output on ``x`` equals the eager network's."""
    ts_path = models / "model.ts"
    bundle(
        "ckpt_export", "network_def", "--filepath", str(ts_path), "--ckpt_file", str(models / "model.pt"),
        "--meta_file", str(meta_file), "--config_file", config_list(*configs), *args,
    )  # fmt: skip
    parser = ConfigParser()
    parser.read_config(list(configs))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    exported = torch.jit.load(str(ts_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x))
