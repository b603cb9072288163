"""Cost of Memory-Attention against self-attention: same network, same weights, same input, one process.

For each configuration the MONAI network (``transmission="none"``, bit-identical to MONAI's class) and its
Memory-Attention variant (STS for UNETR, ISTS for SwinUNETR) run forward + backward in interleaved rounds
(A, B, B, A, ...) so drift in machine load hits both alike. Reported: median wall time per step, the ratio of
the medians, and the median of the per-round ratios (each round's two steps run back to back, so a paired ratio
cancels slow changes in machine load),
parameter counts, and peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the bytes of the
tensors autograd saves for backward (activation memory, which dominates training memory and is what an extra
per-block tensor would grow).

    python -m lmttm_monai.experiments.mam_cost                      # all configurations, CPU or the first GPU
    python -m lmttm_monai.experiments.mam_cost --configs unetr2d --repeats 20
    python -m lmttm_monai.experiments.mam_cost --windows "[7,4]"  # the bundle's MAM-SwinUNETR at two window sizes

``--windows`` instead times the mam_swinunetr bundle's network (ISTS) at each window size, the same way: on its
32 x 64 x 32 crops the first stage is 16 x 32 x 16 tokens, which a window of 7 pads to 21 x 35 x 21 (the padding
is computed and masked out) and a window of 4 tiles exactly.
"""

from __future__ import annotations

import statistics
import time

import fire
import torch

from lmttm_monai.networks.nets import MemorySwinUNETR, MemoryUNETR

CONFIGS = {
    # MONAI's UNETR defaults (hidden 768, 12 heads, 12 blocks), 3D
    "unetr3d": (MemoryUNETR, {"in_channels": 1, "out_channels": 3, "img_size": (64, 64, 64)}, (1, 1, 64, 64, 64)),
    # the mam_unetr bundle's 2D network
    "unetr2d": (
        MemoryUNETR,
        {"in_channels": 3, "out_channels": 2, "img_size": (96, 96), "feature_size": 16, "hidden_size": 192,
         "mlp_dim": 768, "num_heads": 4, "spatial_dims": 2},
        (4, 3, 96, 96),
    ),  # fmt: skip
    # the mam_swinunetr bundle's 3D network and training crops
    "swinunetr3d": (
        MemorySwinUNETR, {"in_channels": 1, "out_channels": 3, "feature_size": 12, "window_size": 4}, (2, 1, 32, 64, 32)
    ),
    "swinunetr2d": (
        MemorySwinUNETR,
        {"in_channels": 3, "out_channels": 2, "feature_size": 24, "spatial_dims": 2},
        (4, 3, 128, 128),
    ),
}


class SavedTensorBytes:
    """Bytes of the tensors autograd saves for backward during a forward pass (distinct storages once)."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def step(net: torch.nn.Module, x: torch.Tensor, device: torch.device) -> tuple[float, int]:
    """One forward + backward; returns seconds and peak memory bytes (see the module docstring)."""
    net.zero_grad(set_to_none=True)
    saved = SavedTensorBytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        loss = net(x).float().square().mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated()
    return time.perf_counter() - start, saved.total


def compare(name: str, repeats: int, warmup: int, device: torch.device) -> dict:
    cls, kwargs, shape = CONFIGS[name]
    torch.manual_seed(0)
    memory_net = cls(**kwargs).to(device)
    plain_net = cls(**kwargs, transmission="none").to(device)
    plain_net.load_state_dict(memory_net.state_dict())
    x = torch.randn(*shape, device=device)
    nets = {"self-attention": plain_net, "memory-attention": memory_net}
    times: dict[str, list[float]] = {k: [] for k in nets}
    peaks: dict[str, int] = dict.fromkeys(nets, 0)
    for i in range(warmup + repeats):
        order = list(nets) if i % 2 == 0 else list(reversed(nets))
        for key in order:
            seconds, peak = step(nets[key], x, device)
            if i >= warmup:
                times[key].append(seconds)
                peaks[key] = max(peaks[key], peak)
    plain_t, memory_t = (statistics.median(times[k]) for k in nets)
    paired = statistics.median(b / a for a, b in zip(times["self-attention"], times["memory-attention"]))
    return {
        "config": name,
        "input": "x".join(map(str, shape)),
        "params (SA / MAM)": f"{sum(p.numel() for p in plain_net.parameters()):,} / "
        f"{sum(p.numel() for p in memory_net.parameters()):,}",
        "median step SA (s)": f"{plain_t:.4f}",
        "median step MAM (s)": f"{memory_t:.4f}",
        "time ratio (medians)": f"{memory_t / plain_t:.3f}",
        "time ratio (paired, median)": f"{paired:.3f}",
        "peak memory ratio": f"{peaks['memory-attention'] / peaks['self-attention']:.3f}",
    }


def compare_windows(sizes: list[int], repeats: int, warmup: int, device: torch.device) -> list[dict]:
    """Median step time of the swinunetr3d configuration (ISTS) at each window size, interleaved rounds."""
    _, kwargs, shape = CONFIGS["swinunetr3d"]
    torch.manual_seed(0)
    nets = {w: MemorySwinUNETR(**{**kwargs, "window_size": w}).to(device) for w in sizes}
    x = torch.randn(*shape, device=device)
    times: dict[int, list[float]] = {w: [] for w in nets}
    for i in range(warmup + repeats):
        for w in sizes if i % 2 == 0 else reversed(sizes):
            seconds, _ = step(nets[w], x, device)
            if i >= warmup:
                times[w].append(seconds)
    first = sizes[0]
    return [
        {"window": str(w), "input": "x".join(map(str, shape)), "params": f"{sum(p.numel() for p in net.parameters()):,}",
         "median step (s)": f"{statistics.median(times[w]):.4f}",
         f"speed-up over window {first} (paired, median)":
             f"{statistics.median(a / b for a, b in zip(times[first], times[w])):.2f}"}
        for w, net in nets.items()
    ]  # fmt: skip


def main(
    configs: str | tuple = tuple(CONFIGS), repeats: int = 10, warmup: int = 2, device: str = "", windows: tuple = ()
) -> None:
    """Print a markdown table, one row per configuration (``configs``: names from ``CONFIGS``), or with ``windows``
    one row per window size of the mam_swinunetr network (module docstring)."""
    names = [configs] if isinstance(configs, str) else list(configs)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}.")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    label = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    what = "MAM-SwinUNETR window sizes" if windows else "Memory-Attention vs self-attention"
    print(f"{what}, forward+backward, {repeats} interleaved rounds, {label}, "
          f"torch {torch.__version__}")  # fmt: skip
    rows = []
    if windows:
        sizes = [int(w) for w in (windows if isinstance(windows, (tuple, list)) else [windows])]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"--windows needs two or more positive window sizes, got {windows!r}.")
        rows = compare_windows(sizes, repeats, warmup, dev)
    for name in [] if windows else names:
        rows.append(compare(name, repeats, warmup, dev))
        print(f"  done: {name}", flush=True)
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row[h] for h in header) + " |")


if __name__ == "__main__":
    fire.Fire(main)
