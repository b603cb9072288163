"""Cost of the SALSTM and LSTMSA heads against the plain U-shaped net they are added to.

Ji, Ye, Ma (IEEE TIP 33:6098-6113, 2024) say the two modules add no extra computational cost. This script
measures, for :class:`lmttm_monai.networks.nets.SALSTMUNet` with ``attention`` ``"salstm"``, ``"lstmsa"`` and
``"none"`` (the plain BasicUNet on the current slice), on the same input in one process:

- the median wall time of one training step (forward + backward), the variants interleaved repeat by repeat so
  that a machine busy with other work slows all of them alike;
- floating-point operations of that step (``torch.utils.flop_counter``);
- memory: on CUDA the peak allocated memory of the step (``torch.cuda.max_memory_allocated``); on the CPU the
  bytes of the tensors autograd saves for the backward pass (the activation memory that dominates a training
  step's peak), and the growth of resident memory during two steps in a fresh process that runs only that
  variant (Linux: the peak is reset through ``/proc/self/clear_refs`` after the imports).

It prints a markdown table with the ratios to ``"none"``. Defaults are the ``bundles/salstm`` network on a
batch of 16 slice stacks of 64 x 64::

    python -m lmttm_monai.experiments.salstm_cost
    python -m lmttm_monai.experiments.salstm_cost --spatial_dims 3 --size 32 --batch 2   # adjacent 32^3 sub-volumes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lmttm_monai.networks.nets import SALSTMUNet

VARIANTS = ("none", "salstm", "lstmsa")


def build(args: argparse.Namespace, attention: str) -> SALSTMUNet:
    torch.manual_seed(0)
    return SALSTMUNet(
        args.spatial_dims,
        in_channels=1,
        out_channels=3,
        context=args.context,
        attention=attention,
        features=tuple(args.features),
        hidden_channels=args.hidden_channels,
        kernel_size=args.kernel_size,
    ).to(args.device)


def make_input(args: argparse.Namespace) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(args.batch, args.context, *[args.size] * args.spatial_dims, device=args.device)


def step(net: torch.nn.Module, x: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    net(x).square().mean().backward()


def saved_tensor_bytes(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward pass (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x).square().mean()
    out.backward()
    return sum(storages.values())


PARTS = {
    "U-Net": ("unet",),
    "ConvLSTM cells": ("forward_lstm.cell", "reverse_lstm.cell"),
    "attention": ("forward_lstm.attention", "reverse_lstm.attention"),
    "head": ("head",),
}


def flops(net: torch.nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Floating-point operations of one training step, in total and per part of the network."""
    with FlopCounterMode(display=False) as counter:
        step(net, x)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    prefix = type(net).__name__
    parts = {part: sum(by_module.get(f"{prefix}.{m}", 0) for m in modules) for part, modules in PARTS.items()}
    return counter.get_total_flops(), parts


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def step_peak_rss_mib(args: argparse.Namespace, attention: str) -> float:
    """Growth of resident memory (MiB) over its level before two training steps of a freshly built net.

    Linux only: writing 5 to ``/proc/self/clear_refs`` resets the peak (``VmHWM``) to the current resident size,
    so the peak is that of the steps alone, not of importing the libraries.
    """
    net, x = build(args, attention), make_input(args)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    step(net, x)
    step(net, x)
    return (_status_kib("VmHWM") - before) / 1024


def peak_rss_mib(argv: list[str], attention: str) -> float:
    """:func:`step_peak_rss_mib` in a fresh process, so that no variant reuses memory another one freed."""
    code = (
        "import sys; sys.path.insert(0, {here!r}); import salstm_cost as b; "
        "print(b.step_peak_rss_mib(b.parse({argv!r}), {attention!r}))"
    ).format(here=os.path.dirname(os.path.abspath(__file__)), argv=argv, attention=attention)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spatial_dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--size", type=int, default=64, help="spatial size of each axis (a multiple of 16)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=3)
    parser.add_argument("--features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16])
    parser.add_argument("--hidden_channels", type=int, default=16)
    parser.add_argument("--kernel_size", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    device = torch.device(args.device)
    x = make_input(args)
    nets = {name: build(args, name) for name in VARIANTS}
    for _ in range(args.warmup):
        for net in nets.values():
            step(net, x)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, net in nets.items():  # interleaved: background load hits every variant alike
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(net, x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    results: dict[str, dict[str, float]] = {}
    for name, net in nets.items():
        total, parts = flops(net, x)
        row = {
            "time_s": statistics.median(times[name]),
            "gflops": total / 1e9,
            **{f"gflops {part}": n / 1e9 for part, n in parts.items()},
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "saved_mib": saved_tensor_bytes(net, x) / 2**20,
        }
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step(net, x)
            torch.cuda.synchronize()
            row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        results[name] = row
    if device.type == "cpu":
        for name in VARIANTS:
            results[name]["peak_mib"] = peak_rss_mib(argv, name)
    peak_name = "peak allocated (CUDA)" if device.type == "cuda" else "peak RSS growth"
    shape = [args.batch, args.context, *[args.size] * args.spatial_dims]
    print(
        f"SALSTMUNet, spatial_dims {args.spatial_dims}, input {shape}, features {tuple(args.features)}, "
        f"hidden {args.hidden_channels}, kernel {args.kernel_size}, device {device}, {torch.get_num_threads()} "
        f"threads, median of {args.repeats} interleaved forward+backward steps\n"
    )
    print(
        "| attention | step time (s) | time ratio | GFLOPs | FLOP ratio | saved for backward (MiB) | ratio "
        f"| {peak_name} (MiB) | ratio | parameters (M) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref = results["none"]
    for name in VARIANTS:
        r = results[name]
        print(
            f"| {name} | {r['time_s']:.3f} | {r['time_s'] / ref['time_s']:.2f} | {r['gflops']:.2f} | "
            f"{r['gflops'] / ref['gflops']:.2f} | {r['saved_mib']:.0f} | {r['saved_mib'] / ref['saved_mib']:.2f} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] / ref['peak_mib']:.2f} | {r['params_m']:.3f} |"
        )
    print("\nGFLOPs of one training step by part (forward and reverse LSTM together):\n")
    print("| attention | " + " | ".join(PARTS) + " |")
    print("|---|" + "---|" * len(PARTS))
    for name in VARIANTS:
        print(f"| {name} | " + " | ".join(f"{results[name][f'gflops {part}']:.3f}" for part in PARTS) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
