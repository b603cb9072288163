"""2.5D sampling: a volume becomes stacks of adjacent slices (previous, current, next) for a slice network.

SALSTM and LSTMSA (Ji, Ye, Ma, IEEE TIP 33:6098-6113, 2024) segment the current slice of a volume from the
slice itself and its neighbours. :func:`adjacent_slice_indices` fixes which slices are the neighbours (the
volume's edge slices are repeated at its borders); :class:`RandAdjacentSlicesd` draws training samples with it,
and :class:`lmttm_monai.inferers.AdjacentSliceInferer` segments whole volumes with the same neighbours.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Randomizable, Transform
from monai.transforms.traits import MultiSampleTrait
from monai.utils import ensure_tuple

__all__ = ["adjacent_slice_indices", "RandAdjacentSlicesd"]


def adjacent_slice_indices(num_slices: int, context: int, device: torch.device | None = None) -> torch.Tensor:
    """``[num_slices, context]`` slice indices: row ``s`` is ``s - context // 2 .. s + context // 2``, clamped.

    Clamping repeats the first and last slice where a neighbour would fall outside the volume, so every slice
    gets a full stack and the edge slices see themselves as their missing neighbour.
    """
    if context < 1 or context % 2 == 0:
        raise ValueError(f"context must be a positive odd number, got {context}.")
    radius = context // 2
    offsets = torch.arange(-radius, radius + 1, device=device)
    return (torch.arange(num_slices, device=device)[:, None] + offsets[None]).clamp(0, num_slices - 1)


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class RandAdjacentSlicesd(Randomizable, Transform, MultiSampleTrait):
    """Draw ``num_samples`` slices of a channel-first 3D volume, each with its adjacent slices as channels.

    The 2.5D training input of SALSTM / LSTMSA (Ji, Ye, Ma, IEEE TIP 2024): ``[C, D1, D2, D3]`` volumes in,
    a list of ``num_samples`` dictionaries out.

    For a slice index ``s`` along spatial ``axis``, every key in ``image_keys`` becomes
    ``[context * C, H, W]`` (the slices ``s - context // 2 .. s + context // 2``, edges repeated, channels of
    one slice kept together), and every key in ``label_keys`` becomes the single slice ``s``: ``[C, H, W]``.
    A fraction ``pos_fraction`` of the draws picks among the slices whose first label holds foreground (any
    value > 0), the rest among all slices, so small structures such as the hippocampus are seen often enough.
    The outputs are plain tensors: the volume's affine does not describe a 2D slice.

    Args:
        image_keys: keys sliced with their neighbours.
        label_keys: keys sliced at the current slice only; the first one decides the foreground slices.
        context: odd number of adjacent slices per sample (3: previous, current, next).
        axis: spatial axis to slice along (0, 1 or 2; the tensor dimension is ``axis + 1``).
        num_samples: samples drawn per volume; the transform returns a list of that many dictionaries.
        pos_fraction: probability that a draw is a foreground slice (when the volume has any).
        allow_missing_keys: skip label keys that a data item lacks.
    """

    def __init__(
        self,
        image_keys: KeysCollection = "image",
        label_keys: KeysCollection = "label",
        context: int = 3,
        axis: int = 0,
        num_samples: int = 1,
        pos_fraction: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        if context < 1 or context % 2 == 0:
            raise ValueError(f"context must be a positive odd number, got {context}.")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be a spatial axis of a 3D volume (0, 1 or 2), got {axis}.")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}.")
        if not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}.")
        self.image_keys: Sequence[Hashable] = ensure_tuple(image_keys)
        self.label_keys: Sequence[Hashable] = ensure_tuple(label_keys)
        self.context, self.axis, self.num_samples = context, axis, num_samples
        self.pos_fraction = pos_fraction
        self.allow_missing_keys = allow_missing_keys
        self._indices: list[int] = []

    def randomize(self, num_slices: int, foreground: np.ndarray) -> None:
        pick_foreground = self.R.rand(self.num_samples) < self.pos_fraction
        self._indices = [
            int(self.R.choice(foreground)) if fg and len(foreground) else int(self.R.randint(num_slices))
            for fg in pick_foreground
        ]

    def __call__(self, data: Mapping) -> list[dict]:
        d = dict(data)
        volume = _plain(d[self.image_keys[0]])
        if volume.ndim != 4:
            raise ValueError(f"expected a channel-first 3D volume [C, D, H, W], got shape {tuple(volume.shape)}.")
        num_slices = volume.shape[self.axis + 1]
        foreground = np.arange(0)
        labels = [k for k in self.label_keys if k in d]
        if len(labels) < len(self.label_keys) and not self.allow_missing_keys:
            raise KeyError(f"the data item lacks label key(s) {[k for k in self.label_keys if k not in d]}.")
        if labels:
            label = _plain(d[labels[0]]).movedim(self.axis + 1, 0)
            foreground = torch.nonzero((label > 0).reshape(num_slices, -1).any(dim=1)).flatten().cpu().numpy()
        self.randomize(num_slices, foreground)
        neighbours = adjacent_slice_indices(num_slices, self.context)
        samples = []
        for index in self._indices:
            sample = dict(d)
            for key in self.image_keys:
                image = _plain(d[key]).movedim(self.axis + 1, 1)  # [C, S, H, W]
                stack = image[:, neighbours[index]]  # [C, T, H, W]
                sample[key] = stack.transpose(0, 1).reshape(-1, *stack.shape[2:]).clone()  # slice by slice
            for key in labels:
                sample[key] = _plain(d[key]).movedim(self.axis + 1, 1)[:, index].clone()
            sample["slice_index"] = index
            samples.append(sample)
        return samples
