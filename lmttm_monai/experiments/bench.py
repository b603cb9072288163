"""Speed of the networks, side by side in one process: ``python -m lmttm_monai.experiments.bench``.

Every case is measured in interleaved rounds (round 1 times each case once, then round 2, ...), so that a machine
growing slower or faster during the run affects all cases alike; the report gives medians over the rounds and
the median of the per-round ratios of the compared pairs. Per case:

- training throughput (samples/s) of one step: forward, cross-entropy loss, backward, Adam step;
- inference latency of one volume (batch 1, ``eval``, ``no_grad``);
- memory: on a GPU the peak allocated during a training step; on a CPU the tensors the step saves for backward
  (its activation memory, the part that grows with the batch), parameters excluded;
- the FLOPs of a training step (``torch.utils.flop_counter``) and the achieved GFLOP/s, beside this machine's own
  fp32 matrix-multiply rate measured in the same run (``torch.mm`` of 2048 x 2048 matrices).

The cases: LMTTM and TTM at the ``lmttm`` bundle's config and at the authors' (dim 448, memory 448 in 4 units,
r 8, patch 3, one post-norm ReLU encoder layer applied 3 times, batch 32), LMTTM there with its cached read only and
with neither cache (the plain read and write), MONAI's 3D ResNet-18 on the same input and DenseNet-121 at 64^3 (it does not fit 28^3), and MAM vs
self-attention in the ``mam_unetr`` and ``mam_swinunetr`` bundles' networks at their training patch size. With
``--authors PATH`` (a checkout of https://github.com/WHKai666666/LMTTM-VMI, imported from there at run time and
never copied) the authors' own LMTTM joins as the speed reference. ``--data`` also measures, through a bundle's
real training loop, the fraction of each step spent waiting for data. ``--compile lmttm_authors_config`` also times
the named cases under ``torch.compile`` (as ``<case>_compiled``, compiled during the warm-up, which is not timed),
with their ratio to the eager case in the same rounds.

    python -m lmttm_monai.experiments.bench --authors ~/src/LMTTM-VMI --data lmttm,mam_unetr --out docs/benchmarks.md
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lmttm_monai.utils.errors import UserError
from lmttm_monai.utils.bundles import bundles_dir
from lmttm_monai.utils.misc import comma_list

__all__ = ["CASES", "PAIRS", "main", "run"]

AUTHORS_CONFIG = {"dim": 448, "memory_tokens": 448, "memory_units": 4, "read_tokens": 8, "patch_size": 3,
                  "num_layers": 1, "layer_repeats": 3, "post_norm": True, "num_heads": 8, "mlp_ratio": 3.0}  # fmt: skip
# (faster, slower): each ratio is the first case's training throughput over the second's, per round
PAIRS = (
    ("lmttm_authors_config", "authors_lmttm"),
    ("lmttm_authors_config", "lmttm_authors_config_uncached"),
    ("lmttm_authors_config", "lmttm_authors_config_read_cache"),
    ("lmttm", "ttm"),
    ("lmttm", "resnet18"),
    ("mam_unetr", "unetr"),
    ("mam_swinunetr", "swinunetr"),
)


class BenchError(UserError):
    """A benchmark that cannot run as asked; the message says why."""


@dataclass
class Case:
    name: str
    label: str
    batch: int
    build: Callable[[int], nn.Module]  # batch size -> model (the authors' model is built for one batch size)
    input_shape: tuple[int, ...]  # one sample
    classes: int
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda net, x: net(x)
    note: str = ""


def compiled_case(case: Case, backend: str = "inductor") -> Case:
    """``case`` with its network wrapped by ``torch.compile``: the same computation, timed as ``<name>_compiled``.

    Its FLOPs, and on a CPU its memory, are counted on the eager network inside the wrapper (a compiled graph runs
    fused kernels that neither the FLOP counter nor the saved-tensor hooks see); its times are the compiled ones.
    """
    note = f"torch.compile ({backend}); FLOPs and, on a CPU, memory counted on the eager network"
    return Case(f"{case.name}_compiled", f"{case.label}, torch.compile", case.batch,
                lambda b: torch.compile(case.build(b), backend=backend), case.input_shape, case.classes,
                case.forward, "; ".join(n for n in (case.note, note) if n))  # fmt: skip


def _bundle_network(bundle: str, *overlays: str, **network_overrides) -> nn.Module:
    """The network a bundle's ``train.json`` (and overlays) builds, with ``network_def`` keys overridden."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundles_dir() / bundle / "configs" / name) for name in ("train.json", *overlays)])
    parser["bundle_root"] = str(bundles_dir() / bundle)
    for key, value in network_overrides.items():
        parser[f"network_def#{key}"] = value
    return parser.get_parsed_content("network_def")


def _bundle_value(bundle: str, key: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundles_dir() / bundle / "configs" / "train.json"))
    return parser.get_parsed_content(key)


@contextlib.contextmanager
def _without_cuda() -> Iterator[None]:
    """On a machine without CUDA, ``.cuda()`` of tensors and modules returns them unchanged while inside."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved


@contextlib.contextmanager
def _authors_code(path: Path) -> Iterator[types.ModuleType]:
    """Import the authors' ``model/LMTTM.py`` from ``path``. On a machine without CUDA their ``.cuda()`` calls are
    made no-ops while their code runs; where torchvision cannot be imported, the 2D ResNet-18 of their unused
    ``resnet18`` preprocessing branch (built in their constructor, not on the ``3d`` path timed here) is an empty
    module."""
    try:
        import einops  # noqa: F401  (their code imports it)
    except ImportError:
        raise BenchError("the authors' code needs einops: pip install einops") from None
    saved_path = list(sys.path)
    shim = None
    try:
        import torchvision  # noqa: F401
    except Exception:  # the CPU torch of this project's install has no matching torchvision
        shim = types.ModuleType("torchvision")
        shim.models = types.SimpleNamespace(resnet18=lambda **_: nn.Module())
        sys.modules["torchvision"], sys.modules["torchvision.models"] = shim, shim.models
    sys.path.insert(0, str(path))
    try:
        import importlib

        with _without_cuda():
            yield importlib.import_module("model.LMTTM")
    finally:
        sys.path[:] = saved_path
        if shim is not None:
            del sys.modules["torchvision"], sys.modules["torchvision.models"]


def _authors_case(path: Path) -> Case:
    if not (path / "model" / "LMTTM.py").is_file() or not (path / "config" / "base.json").is_file():
        raise BenchError(f"{path} has no model/LMTTM.py and config/base.json: pass a checkout of "
                         "https://github.com/WHKai666666/LMTTM-VMI")  # fmt: skip
    config = json.loads((path / "config" / "base.json").read_text())
    config["model"].update(model="lmttm", process_unit="transformer", memory_mode="TL", preprocess_mode="3d")

    def build(batch: int) -> nn.Module:
        with _authors_code(path) as code:
            return code.TokenTuringMachineEncoder({**config, "batch_size": batch})

    def forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with _without_cuda():  # their forward moves new tensors to CUDA
            return net(x, None)[0]  # (logits, memory): a fresh memory per batch, as their test mode

    return Case("authors_lmttm", "authors' LMTTM (their code)", 32, build, (1, 28, 28, 28), 2, forward,
                "dim 448, memory 448, 4 units, r 8, patch 3, 1 layer x 3; their code from --authors")  # fmt: skip


def cases(authors: str | None = None) -> dict[str, Case]:
    """Every benchmark case, keyed by name; ``authors``: a checkout of the authors' LMTTM code."""
    from monai.networks.nets import DenseNet121, resnet18

    from lmttm_monai.networks.nets import LMTTM, TTM

    size = 28
    classification = (1, size, size, size)
    found = {
        "lmttm": Case("lmttm", "LMTTM (lmttm bundle)", 32, lambda b: _bundle_network("lmttm"), classification, 2),
        "ttm": Case("ttm", "TTM (ttm.json)", 32, lambda b: _bundle_network("lmttm", "ttm.json"), classification, 2),
        "lmttm_authors_config": Case("lmttm_authors_config", "LMTTM, authors' config", 32,
                                     lambda b: LMTTM(3, 1, 2, size, **AUTHORS_CONFIG), classification, 2),
        "lmttm_authors_config_read_cache": Case("lmttm_authors_config_read_cache",
                                                "LMTTM, authors' config, cached read only", 32,
                                                lambda b: LMTTM(3, 1, 2, size, cache_writes=False, **AUTHORS_CONFIG),
                                                classification, 2),
        "lmttm_authors_config_uncached": Case("lmttm_authors_config_uncached",
                                              "LMTTM, authors' config, plain read and write", 32,
                                              lambda b: LMTTM(3, 1, 2, size, cache_reads=False, cache_writes=False,
                                                              **AUTHORS_CONFIG), classification, 2),
        "ttm_authors_config": Case("ttm_authors_config", "TTM, authors' config", 32,
                                   lambda b: TTM(3, 1, 2, size, **{k: v for k, v in AUTHORS_CONFIG.items()
                                                                   if k != "memory_units"}), classification, 2),
        "resnet18": Case("resnet18", "MONAI 3D ResNet-18", 32,
                         lambda b: resnet18(spatial_dims=3, n_input_channels=1, num_classes=2), classification, 2),
        "densenet121_64": Case("densenet121_64", "MONAI 3D DenseNet-121 at 64^3", 8,
                               lambda b: DenseNet121(3, 1, 2), (1, 64, 64, 64), 2,
                               note="64^3, batch 8: at 28^3 its fourth block has no voxels left"),
    }  # fmt: skip
    roi = tuple(_bundle_value("mam_unetr", "roi_size"))
    found["mam_unetr"] = Case("mam_unetr", "MAM-UNETR (STS)", 2, lambda b: _bundle_network("mam_unetr"), (3, *roi), 2)
    found["unetr"] = Case("unetr", "UNETR (self-attention)", 2,
                          lambda b: _bundle_network("mam_unetr", "unetr.json"), (3, *roi), 2)  # fmt: skip
    roi3 = tuple(_bundle_value("mam_swinunetr", "roi_size"))
    found["mam_swinunetr"] = Case("mam_swinunetr", "MAM-SwinUNETR (ISTS)", 2,
                                  lambda b: _bundle_network("mam_swinunetr"), (1, *roi3), 3)  # fmt: skip
    found["swinunetr"] = Case("swinunetr", "SwinUNETR (self-attention)", 2,
                              lambda b: _bundle_network("mam_swinunetr", "swinunetr.json"), (1, *roi3), 3)  # fmt: skip
    if authors:
        found["authors_lmttm"] = _authors_case(Path(authors).expanduser())
    return found


CASES = ("lmttm", "ttm", "lmttm_authors_config", "lmttm_authors_config_read_cache", "lmttm_authors_config_uncached",
         "ttm_authors_config",
         "authors_lmttm", "resnet18", "densenet121_64", "mam_unetr", "unetr", "mam_swinunetr", "swinunetr")  # fmt: skip


class _Runner:
    """One case's model, optimizer and fixed batch; ``step`` and ``infer`` are what the rounds time."""

    def __init__(self, case: Case, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        self.case, self.device = case, device
        self.net = case.build(case.batch).to(device)
        self.optimizer = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=1e-4)
        self.x = torch.rand((case.batch, *case.input_shape), generator=generator).to(device)
        self.infer_net = case.build(1).to(device).eval() if case.name == "authors_lmttm" else self.net
        self.x1 = self.x[:1]
        self.params = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        self.target = None

    def loss(self) -> torch.Tensor:
        out = self.case.forward(self.net, self.x)
        if self.target is None:  # classes per sample, or per voxel for segmentation
            shape = (out.shape[0], *out.shape[2:])
            self.target = torch.randint(0, out.shape[1], shape, generator=torch.Generator().manual_seed(1))
            self.target = self.target.to(self.device)
        return nn.functional.cross_entropy(out, self.target)

    def step(self) -> None:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        self.optimizer.step()

    @torch.no_grad()
    def infer(self) -> None:
        self.infer_net.eval()
        self.case.forward(self.infer_net, self.x1)

    def flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, self._eager():
            self.step()
        return counter.get_total_flops()

    @contextlib.contextmanager
    def _eager(self) -> Iterator[None]:
        """Run ``step`` on the eager network inside a ``torch.compile`` wrapper (same parameters and optimizer)."""
        compiled, self.net = self.net, getattr(self.net, "_orig_mod", self.net)
        try:
            yield
        finally:
            self.net = compiled

    def memory_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.step()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        params = {p.untyped_storage().data_ptr() for p in self.net.parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._eager(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss()
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(saved.values())


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 ``torch.mm`` rate in GFLOP/s: the best of ``repeats`` products of ``n x n`` matrices."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def data_wait(bundle: str, iterations: int) -> dict:
    """Fraction of each training step a bundle's real ``SupervisedTrainer`` spends waiting for its next batch.

    The bundle's ``train.json`` runs ``iterations`` steps (its own data loader, transforms, ``num_workers``);
    ignite's ``GET_BATCH_STARTED`` / ``GET_BATCH_COMPLETED`` events bracket the wait. The first step (workers
    starting) is left out.
    """
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundles_dir() / bundle / "configs" / "train.json"))
    scratch = tempfile.mkdtemp(prefix=f"bench_{bundle}_")
    parser.update({"bundle_root": str(bundles_dir() / bundle), "epochs": 1, "epoch_length": iterations + 1,
                   "output_dir": scratch, "ckpt_dir": scratch, "overwrite": True})  # fmt: skip
    trainer = parser.get_parsed_content("train#trainer")
    marks: list[tuple[str, float]] = []
    for event in (Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED):
        trainer.add_event_handler(event, lambda engine, e=event.name: marks.append((e, time.perf_counter())))
    trainer.run()
    starts = [t for e, t in marks if e == "GET_BATCH_STARTED"]
    done = [t for e, t in marks if e == "GET_BATCH_COMPLETED"]
    waits = [d - s for s, d in zip(starts[1:-1], done[1:-1])]
    steps = [b - a for a, b in zip(starts[1:-1], starts[2:])]
    return {"bundle": bundle, "iterations": len(steps), "wait_s": sum(waits), "step_s": sum(steps),
            "fraction": sum(waits) / sum(steps) if steps else float("nan"),
            "num_workers": parser.get_parsed_content("num_workers"),
            "batch_size": parser.get_parsed_content("batch_size")}  # fmt: skip


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import monai

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "platform": platform.platform()}  # fmt: skip


def run(
    out: str = "docs/benchmarks.md",
    rounds: int = 5,
    only: str | tuple = "",
    authors: str | None = None,
    threads: int | None = None,
    device: str = "",
    data: str | tuple = "",
    data_iterations: int = 20,
    batch: int | None = None,
    overwrite: bool = False,
    from_json: str | None = None,
    compile: str | tuple = "",
    compile_backend: str = "inductor",
) -> str:
    """Measure the cases and write ``out`` (markdown) and the same path with ``.json``; returns the markdown path.

    Args:
        out: the report; refused if it exists, unless ``overwrite``.
        rounds: timed rounds after one warm-up round.
        only: comma-separated case names (default: all; ``authors_lmttm`` needs ``authors``).
        authors: path of a checkout of the authors' LMTTM code (the speed reference).
        threads: torch CPU threads (default: torch's, usually the core count).
        device: ``cpu`` or ``cuda`` (default: ``cuda`` where available).
        data: comma-separated bundles whose training loop's data wait is measured (``lmttm,mam_unetr``).
        data_iterations: training steps for each data-wait measurement (each bundle reads its default
            ``dataset_dir``: ``$MONAI_DATA_DIRECTORY/<its folder>``).
        batch: the training batch of every case instead of its own (a quick check; the report says so).
        overwrite: replace an existing report.
        from_json: write the markdown from an earlier run's JSON report instead of measuring.
        compile: comma-separated cases also timed under ``torch.compile`` (``<case>_compiled``), each paired with
            its eager case in the ratios.
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager`` traces without generating code).
    """
    out_path = Path(out).expanduser()
    if out_path.exists() and not overwrite:
        raise BenchError(f"{out_path} exists; pass --overwrite to replace it or --out to write elsewhere")
    from lmttm_monai.utils.outputs import atomic_path

    if from_json:
        report = json.loads(Path(from_json).expanduser().read_text())
        with atomic_path(out_path) as tmp:
            Path(tmp).write_text(_markdown(report))
        return str(out_path)
    if int(rounds) < 1:
        raise BenchError(f"rounds must be a positive integer, got {rounds!r}")
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    to_compile = comma_list(compile)
    if "authors_lmttm" in to_compile:
        raise BenchError("authors_lmttm cannot be compiled here: the speed reference is their code as published")
    available = cases(authors)
    wanted = comma_list(only)
    wanted = wanted or [n for n in CASES if n in available]
    unknown = [n for n in wanted + to_compile if n not in available]
    if unknown:
        hint = " (authors_lmttm needs --authors PATH)" if "authors_lmttm" in unknown else ""
        raise BenchError(f"unknown case(s) {', '.join(unknown)}{hint}; choose from {', '.join(available)}")
    pairs = list(PAIRS)
    for name in to_compile:
        available[f"{name}_compiled"] = compiled_case(available[name], compile_backend)
        wanted += [n for n in (name, f"{name}_compiled") if n not in wanted]
        pairs.append((f"{name}_compiled", name))
    from tqdm import tqdm

    # first: it needs the datasets, and a missing one should fail before minutes of timing
    data_rows = [data_wait(b, int(data_iterations)) for b in comma_list(data)]
    peak_before = matmul_peak(dev)
    runners = {}
    for name in tqdm(wanted, desc="build and warm up"):
        case = available[name]
        if batch:  # each case's build takes the batch (the authors' model is built for one batch size)
            case.batch = int(batch)
        runner = _Runner(case, dev)
        runner.step()
        runner.infer()  # warm-up: first calls allocate and pick kernels
        runners[name] = runner
    times: dict[str, dict[str, list[float]]] = {n: {"step": [], "infer": []} for n in wanted}
    for _ in tqdm(range(int(rounds)), desc="rounds"):
        for name, runner in runners.items():
            times[name]["step"].append(_timed(runner.step, dev))
            times[name]["infer"].append(_timed(runner.infer, dev))
    peak_after = matmul_peak(dev)
    peak = statistics.median([peak_before, peak_after])
    results = {}
    for name, runner in tqdm(runners.items(), desc="flops and memory"):
        flops = runner.flops()
        step = statistics.median(times[name]["step"])
        results[name] = {
            "label": runner.case.label, "batch": runner.case.batch, "input": list(runner.case.input_shape),
            "parameters": runner.params, "note": runner.case.note,
            "step_s": times[name]["step"], "infer_s": times[name]["infer"],
            "train_samples_per_s": runner.case.batch / step, "infer_ms": 1e3 * statistics.median(times[name]["infer"]),
            "step_gflop_per_sample": flops / runner.case.batch / 1e9, "achieved_gflops": flops / step / 1e9,
            "fraction_of_matmul_peak": flops / step / 1e9 / peak, "memory_mib": runner.memory_bytes() / 2**20,
        }  # fmt: skip
    ratios = {}
    for fast, slow in pairs:
        if fast in times and slow in times:
            per_round = [times[slow]["step"][i] / times[fast]["step"][i] for i in range(int(rounds))]
            ratios[f"{fast} / {slow}"] = {"median": statistics.median(per_round), "rounds": per_round}
    report = {"machine": machine(dev), "device": str(dev), "rounds": int(rounds), "command": _command(),
              "matmul_peak_gflops": {"before": peak_before, "after": peak_after, "median": peak},
              "cases": results, "ratios": ratios, "data_wait": data_rows}  # fmt: skip
    for path, text in ((out_path.with_suffix(".json"), json.dumps(report, indent=2) + "\n"), (out_path, _markdown(report))):
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    return str(out_path)


def _command() -> str:
    return "python -m lmttm_monai.experiments.bench " + " ".join(sys.argv[1:]) if sys.argv and "bench" in sys.argv[0] else ""


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Benchmarks ({report['device']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, GPU {m['gpu'] or 'none'}; "
             f"Python {m['python']}, torch {m['torch']}, MONAI {m['monai']}.", "",
             f"Command: `{report['command'] or 'python -m lmttm_monai.experiments.bench'}`; {report['rounds']} interleaved rounds "
             "after a warm-up, medians. fp32 matmul peak of this machine in the same run: "
             f"{report['matmul_peak_gflops']['median']:.1f} GFLOP/s (before {report['matmul_peak_gflops']['before']:.1f}, "
             f"after {report['matmul_peak_gflops']['after']:.1f}).", "",
             "| case | batch | input | parameters | train samples/s | inference ms/volume | GFLOP/sample/step "
             "| achieved GFLOP/s | of matmul peak | memory MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    memory = "peak allocated" if report["device"].startswith("cuda") else "saved for backward"
    for r in report["cases"].values():
        lines.append(
            f"| {r['label']} | {r['batch']} | {'x'.join(map(str, r['input']))} | {r['parameters'] / 1e6:.2f} M "
            f"| {r['train_samples_per_s']:.2f} | {r['infer_ms']:.1f} | {r['step_gflop_per_sample']:.2f} "
            f"| {r['achieved_gflops']:.1f} | {r['fraction_of_matmul_peak']:.2f} | {r['memory_mib']:.0f} |"
        )
    lines += ["", f"Memory: {memory} during one training step.",
              *[f"- {r['label']}: {r['note']}." for r in report["cases"].values() if r["note"]], "",
              "Training-throughput ratios (median of the per-round ratios; > 1: the first is faster):", ""]  # fmt: skip
    for pair, r in report["ratios"].items():
        lines.append(f"- {pair}: **{r['median']:.2f}x** (rounds: {', '.join(f'{v:.2f}' for v in r['rounds'])})")
    lines += _goal_lines(report)
    if report["data_wait"]:
        lines += ["", "Data wait in the bundles' own training loops (first step excluded):", "",
                  "| bundle | steps | batch | num_workers | waiting for data |", "|---|---|---|---|---|"]  # fmt: skip
        for d in report["data_wait"]:
            lines.append(f"| {d['bundle']} | {d['iterations']} | {d['batch_size']} | {d['num_workers']} "
                         f"| {100 * d['fraction']:.1f}% of {d['step_s']:.1f} s |")  # fmt: skip
    return "\n".join(lines) + "\n"


# the speed goal of this project's LMTTM against the authors' implementation, same network and FLOPs
SPEED_GOAL = {"cpu": 1.5, "cuda": 3.0}


def _goal_lines(report: dict) -> list[str]:
    """Whether the goal is met and, from the counted FLOPs and the achieved rates, where the difference comes from."""
    ratio = report["ratios"].get("lmttm_authors_config / authors_lmttm")
    cases = report["cases"]
    if ratio is None or "authors_lmttm" not in cases:
        return ["", "Speed goal against the authors' LMTTM: not measured (run with --authors PATH)."]
    goal = SPEED_GOAL["cuda" if report["device"].startswith("cuda") else "cpu"]
    ours, theirs = cases["lmttm_authors_config"], cases["authors_lmttm"]
    verdict = "met" if ratio["median"] >= goal else f"missed by {100 * (1 - ratio['median'] / goal):.0f}%"
    lines = ["", f"Speed goal on {report['device']}: {goal:g}x the authors' LMTTM training throughput at their "
             f"configuration. Measured **{ratio['median']:.2f}x**: {verdict}. A step of theirs counts "
             f"{theirs['step_gflop_per_sample']:.1f} GFLOP per sample, ours {ours['step_gflop_per_sample']:.1f} "
             f"({ours['step_gflop_per_sample'] / theirs['step_gflop_per_sample']:.2f} of theirs), run at "
             f"{theirs['fraction_of_matmul_peak']:.2f} and {ours['fraction_of_matmul_peak']:.2f} of this machine's "
             "fp32 matmul rate."]  # fmt: skip
    for name, what in (("lmttm_authors_config_read_cache", "With the cached read only"),
                       ("lmttm_authors_config_uncached", "With neither cache (the plain read and write)")):
        case = cases.get(name)
        if case:
            lines[-1] += (f" {what}, ours counts {case['step_gflop_per_sample']:.1f} GFLOP per sample at "
                          f"{case['fraction_of_matmul_peak']:.2f} of the matmul rate.")  # fmt: skip
    # where ours and theirs run at about the same rate, what the caches gain is the FLOPs that they leave out
    if abs(ours["fraction_of_matmul_peak"] - theirs["fraction_of_matmul_peak"]) <= 0.03:
        lines[-1] += (" Both run at about the same rate, so the gain is the FLOPs that the cached read and write "
                      "leave out; `docs/lmttm.md` (Cached read and write) says what a step still spends.")  # fmt: skip
    else:
        lines[-1] += " The rates differ, so the gain is not the saved FLOPs alone."
    for other, other_goal in SPEED_GOAL.items():  # one run measures one device: say the other goal is open
        if other != ("cuda" if report["device"].startswith("cuda") else "cpu"):
            lines.append(f"\nSpeed goal on {other} ({other_goal:g}x): not measured by this run (run it with "
                         f"--device {other}).")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    from lmttm_monai.utils.errors import fire_one_line

    fire_one_line(run, argv, "lmttm_monai.experiments.bench", "python -m lmttm_monai.experiments.bench")


if __name__ == "__main__":
    main()
