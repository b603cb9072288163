"""Segment a whole volume with a 2.5D network, slice by slice with neighbour context, and reassemble it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type, ensure_tuple_rep

from lmttm_monai.transforms.slices import adjacent_slice_indices

__all__ = ["AdjacentSliceInferer"]


class AdjacentSliceInferer(Inferer):
    """Run a network on every slice of a batch of volumes, each slice with its adjacent slices as channels.

    Made for the 2.5D :class:`lmttm_monai.networks.nets.SALSTMUNet` (Ji, Ye, Ma, IEEE TIP 33:6098-6113, 2024):
    slice ``s`` along spatial ``axis`` is given with slices ``s - context // 2 .. s + context // 2`` (the edge
    slices repeated, exactly as :class:`lmttm_monai.transforms.RandAdjacentSlicesd` does in training). Each slice
    is zero-padded symmetrically to at least ``spatial_size`` and to a multiple of ``divisible`` (the padding
    training uses, ``ResizeWithPadOrCrop`` to ``spatial_size``, is the same for slices that fit), the logits are
    cropped back and stacked in place, so the output is on the input's own voxel grid and needs no inversion.

    Args:
        axis: spatial axis to slice along (0, 1 or 2).
        context: odd number of adjacent slices per network input.
        spatial_size: smallest in-plane size given to the network.
        divisible: in-plane sizes are padded to a multiple of this (16 for the four poolings of a U-Net).
        slice_batch_size: slices per network call.

    Shapes:
        ``inputs`` ``[B, C, D1, D2, D3]`` -> ``[B, K, D1, D2, D3]`` for a network mapping
        ``[N, context * C, H, W]`` to ``[N, K, H, W]``. A ``MetaTensor`` input gives a ``MetaTensor`` output
        with the input's metadata (affine, file name), ready for ``SaveImaged``.
    """

    def __init__(
        self,
        axis: int = 0,
        context: int = 3,
        spatial_size: Sequence[int] | int = 64,
        divisible: int = 16,
        slice_batch_size: int = 32,
    ) -> None:
        super().__init__()
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be a spatial axis of a 3D volume (0, 1 or 2), got {axis}.")
        if context < 1 or context % 2 == 0:
            raise ValueError(f"context must be a positive odd number, got {context}.")
        if divisible < 1 or slice_batch_size < 1:
            raise ValueError(f"divisible and slice_batch_size must be positive, got {divisible}, {slice_batch_size}.")
        self.axis, self.context, self.divisible = axis, context, divisible
        self.spatial_size = ensure_tuple_rep(spatial_size, 2)
        self.slice_batch_size = slice_batch_size

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.ndim != 5:
            raise ValueError(f"expected a batch of 3D volumes [B, C, D1, D2, D3], got shape {tuple(inputs.shape)}.")
        x = torch.as_tensor(inputs).as_subclass(torch.Tensor).movedim(self.axis + 2, 2)  # [B, C, S, H, W]
        batch, channels, num_slices, height, width = x.shape
        padded = [max(size, n) for size, n in zip((height, width), self.spatial_size)]
        padded = [-(-n // self.divisible) * self.divisible for n in padded]
        before = [(p - n) // 2 for p, n in zip(padded, (height, width))]
        # F.pad takes the last dimension first
        x = F.pad(x, (before[1], padded[1] - width - before[1], before[0], padded[0] - height - before[0]))
        neighbours = adjacent_slice_indices(num_slices, self.context, device=x.device)
        step = max(1, self.slice_batch_size // batch)
        outputs = []
        for start in range(0, num_slices, step):
            rows = neighbours[start : start + step]  # [n, T]
            stacks = x[:, :, rows]  # [B, C, n, T, H, W]
            n = rows.shape[0]
            stacks = stacks.permute(0, 2, 3, 1, 4, 5).reshape(batch * n, self.context * channels, *padded)
            logits = network(stacks, *args, **kwargs)
            outputs.append(logits.reshape(batch, n, *logits.shape[1:]))
        out = torch.cat(outputs, dim=1).transpose(1, 2)  # [B, K, S, H, W]
        out = out[..., before[0] : before[0] + height, before[1] : before[1] + width]
        out = out.movedim(2, self.axis + 2)
        return convert_to_dst_type(out, inputs, dtype=out.dtype)[0]
