"""Token Turing Machines for volumetric (3D) and planar (2D) image classification: LMTTM and TTM.

- LMTTM: Wei et al., "LMTTM-VMI: Linked Memory Token Turing Machine for 3D volumetric medical image
  classification", Computer Methods and Programs in Biomedicine 262:108640, 2025.
- TTM: Ryoo et al., "Token Turing Machines", CVPR 2023 (arXiv:2211.09119).

An image is cut into non-overlapping patches by a strided convolution. The first spatial axis of the patch
grid is time: 3D ``[B, C, D, H, W]`` gives ``D / p`` steps of ``(H / p) (W / p)`` tokens, 2D ``[B, C, H, W]``
gives ``H / p`` steps (rows of patches) of ``W / p`` tokens. Each step reads from an external memory, processes
what it read into output tokens ``O_t``, and writes ``[memory ; I_t ; O_t]`` back. The class scores come from
the mean of all ``O_t`` of all steps through a linear head; since the head is linear this equals the mean of
the per-step scores ``Y_t = W_o O_t`` that the LMTTM paper describes.

What this implementation fixes relative to the authors' public code (see ``docs/lmttm.md``): attention is
batch first, so the samples of a batch never interact; positional embeddings are learned parameters; the
memory and the ring pointer start afresh for every volume; there is no noise at evaluation; any batch size works.

Spatial sizes that are not a multiple of ``patch_size`` are cropped: the strided convolution drops the last
``img_size % patch_size`` voxels along each axis (28 with patch 3 gives 9 patches, as in the authors' code).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.utils import ensure_tuple_rep

from lmttm_monai.networks.blocks.memory import LinkedMemory, TokenMemory
from lmttm_monai.networks.blocks.process_unit import ProcessUnit

__all__ = ["TokenTuringMachine", "LMTTM", "TTM"]


class TokenTuringMachine(nn.Module):
    """Shared implementation of :class:`LMTTM` (``memory_units`` set) and :class:`TTM` (``memory_units=None``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: number of classes.
        img_size: spatial size of the input (int or one per axis); fixes the number of steps and tokens.
        patch_size: patch (and stride) of the tokenizer, int or one per axis.
        dim: token width ``C``.
        memory_tokens: memory size ``m``.
        memory_units: number of linked memory units ``k`` (LMTTM), or ``None`` for one whole memory (TTM).
        read_tokens: tokens read per memory unit ``r``.
        num_layers: blocks in the process unit.
        num_heads: attention heads in the process unit.
        mlp_ratio: MLP width of the process unit relative to ``dim``.
        dropout: dropout rate in the process unit and token learners.
        process_unit: ``"transformer"``, ``"mixer"`` or ``"mlp"``.
        memory_init: ``"learned"`` or ``"zeros"`` initial memory, fresh for every volume.
        token_learner: ``"lmttm"`` (the LMTTM authors' read/write token learner: an MLP as wide as the tokens and a
            feature projection) or ``"scenic"`` (TokenLearnerV11 as scenic's TTM uses it: a 64-wide bottleneck MLP,
            the weights applied to the raw tokens).
        position_embedding: learned positional embeddings on the read and write sequences (scenic's TTM: none).
        layer_repeats: the process unit's layers are applied this many times with shared weights (the LMTTM
            authors' MDU: ``num_layers=1, layer_repeats=3``).
        post_norm: the LMTTM authors' transformer layers: post-norm, ReLU, no final LayerNorm.
        cache_reads: compute each memory unit's read token-learner terms once until the unit is rewritten, and
            each step's input terms once for the three reads (LMTTM; the outputs equal the plain read's, see
            :meth:`LinkedMemory.read_cached`). ``False`` runs the plain read.
        cache_writes: keep each memory unit, and its write feature projection ``W x``, apart until the unit is
            rewritten (LMTTM; the outputs equal the plain write's to float rounding, see
            :meth:`LinkedMemory.write_cached`). ``False`` runs the plain write on the whole memory tensor.

    Shapes:
        ``forward(x)``: ``x`` ``[B, in_channels, *img_size]`` -> logits ``[B, out_channels]``.
        ``forward_with_weights(x)``: ``(logits, read_weights, write_weights)`` with, for ``T`` steps,
        ``read_weights`` ``[B, T, G, r, L_read]`` (``G = 3`` read units for LMTTM, 1 for TTM) and
        ``write_weights`` ``[B, T, S_write, L_write]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 3,
        dim: int = 448,
        memory_tokens: int = 448,
        memory_units: int | None = 4,
        read_tokens: int = 8,
        num_layers: int = 1,
        num_heads: int = 8,
        mlp_ratio: float = 3.0,
        dropout: float = 0.2,
        process_unit: str = "transformer",
        memory_init: str = "learned",
        token_learner: str = "lmttm",
        position_embedding: bool = True,
        layer_repeats: int = 1,
        post_norm: bool = False,
        cache_reads: bool = True,
        cache_writes: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels}.")
        if out_channels < 1:
            raise ValueError(f"out_channels (number of classes) must be a positive integer, got {out_channels}.")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}.")
        # before the tokenizer is built: a non-positive width would otherwise fail inside torch's Conv init
        for name, value in (("dim", dim), ("memory_tokens", memory_tokens), ("read_tokens", read_tokens)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}.")
        img_size = ensure_tuple_rep(img_size, spatial_dims)
        patch_size = ensure_tuple_rep(patch_size, spatial_dims)
        if any(p < 1 for p in patch_size):
            raise ValueError(f"patch_size must be positive, got {patch_size}.")
        if any(s < p for s, p in zip(img_size, patch_size)):
            raise ValueError(
                f"img_size {tuple(img_size)} is smaller than one patch {tuple(patch_size)} along some axis; "
                "use a smaller patch_size or a larger input."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.img_size = [int(s) for s in img_size]
        grid = [s // p for s, p in zip(img_size, patch_size)]
        self.num_steps = grid[0]
        input_tokens = 1
        for g in grid[1:]:
            input_tokens *= g
        self.input_tokens = input_tokens

        self.tokenizer = Convolution(
            spatial_dims, in_channels, dim, strides=patch_size, kernel_size=patch_size, padding=0, act="RELU", norm=None
        )
        self.memory: LinkedMemory | TokenMemory
        options = {"token_learner": token_learner, "position_embedding": position_embedding}
        if memory_units is None:
            self.memory = TokenMemory(dim, memory_tokens, input_tokens, read_tokens, dropout, memory_init, **options)
        else:
            self.memory = LinkedMemory(
                dim, memory_tokens, memory_units, input_tokens, read_tokens, dropout, memory_init, **options
            )
        self.process = ProcessUnit(
            process_unit, dim, self.memory.num_read_tokens, num_layers, num_heads, mlp_ratio, dropout, layer_repeats,
            post_norm,
        )
        self.cache_reads = cache_reads
        self.cache_writes = cache_writes
        self.head = nn.Linear(dim, out_channels)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                "expected an input of shape [B, " + str(self.in_channels) + ", " + str(self.img_size)[1:-1]
                + "], got a tensor of rank " + str(x.ndim) + " with shape " + str(list(x.shape)) + "."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                "expected " + str(self.in_channels) + " input channel(s), got " + str(x.shape[1])
                + " (input shape " + str(list(x.shape)) + ")."
            )
        if list(x.shape[2:]) != self.img_size:
            raise ValueError(
                "expected spatial size " + str(self.img_size) + ", got " + str(list(x.shape[2:]))
                + "; build the network with this img_size or resize the input."
            )

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        self._check_input(x)
        # [B, C, T, ...] -> [B, T, n, C]: the first spatial axis is time, the rest are the tokens of a step
        steps = self.tokenizer(x).flatten(3).permute(0, 2, 3, 1)
        memory = self.memory.initial_memory(x.shape[0])
        num_steps = steps.shape[1]
        read_cache: list[torch.Tensor] = []
        if self.cache_reads:
            read_cache = self.memory.read_cache(self.memory.initial_memory(1), x.shape[0])
        write_cache: list[torch.Tensor] = []
        if self.cache_writes:
            write_cache = self.memory.write_cache(self.memory.initial_memory(1), x.shape[0])
        outputs: list[torch.Tensor] = []
        read_weights: list[torch.Tensor] = []
        write_weights: list[torch.Tensor] = []
        for t in range(num_steps):
            inputs = steps[:, t]
            if self.cache_reads:
                read, r_weights = self.memory.read_cached(inputs, t, read_cache)
            else:
                read, r_weights = self.memory.read(memory, inputs, t)
            processed = self.process(read)
            if self.cache_writes:
                unit, w_weights = self.memory.write_cached(inputs, processed, t, write_cache)
                if t + 1 < num_steps:
                    write_cache = self.memory.update_write_cache(write_cache, unit, t)
                    if not self.cache_reads:
                        memory = self.memory.memory_from_cache(write_cache)
            else:
                memory, w_weights = self.memory.write(memory, inputs, processed, t)
                unit = self.memory.written_unit(memory, t)
            if self.cache_reads and t + 1 < num_steps:
                read_cache = self.memory.update_read_cache(read_cache, unit, t)
            outputs.append(processed)
            read_weights.append(r_weights)
            write_weights.append(w_weights)
        logits = self.head(torch.cat(outputs, dim=1).mean(dim=1))
        return logits, read_weights, write_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    @torch.jit.export
    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits plus the per-step read and write token-learner weights, for visualisation."""
        logits, read_weights, write_weights = self._run(x)
        return logits, torch.stack(read_weights, dim=1), torch.stack(write_weights, dim=1)


class LMTTM(TokenTuringMachine):
    """Linked Memory Token Turing Machine (Wei et al., CMPB 2025).

    ``memory_tokens`` tokens in ``memory_units`` linked units on a ring; each step reads the three units around
    the pointer, processes the ``3 r`` read tokens with the Memory Distillation Unit, and writes one new unit.
    Defaults follow the paper (patch 3, dim 448, memory 448 in 4 units, r = 8, 8 heads, MLP ratio 3, dropout
    0.2). See :class:`TokenTuringMachine` for the arguments and shapes.

    Example::

        net = LMTTM(spatial_dims=3, in_channels=1, out_channels=2, img_size=28)
        logits = net(torch.rand(4, 1, 28, 28, 28))  # [4, 2]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 3,
        dim: int = 448,
        memory_tokens: int = 448,
        memory_units: int = 4,
        read_tokens: int = 8,
        num_layers: int = 1,
        num_heads: int = 8,
        mlp_ratio: float = 3.0,
        dropout: float = 0.2,
        process_unit: str = "transformer",
        memory_init: str = "learned",
        token_learner: str = "lmttm",
        position_embedding: bool = True,
        layer_repeats: int = 1,
        post_norm: bool = False,
        cache_reads: bool = True,
        cache_writes: bool = True,
    ) -> None:
        if memory_units is None or memory_units < 1:
            raise ValueError(f"memory_units must be a positive integer for LMTTM, got {memory_units}.")
        super().__init__(
            spatial_dims, in_channels, out_channels, img_size, patch_size, dim, memory_tokens, memory_units,
            read_tokens, num_layers, num_heads, mlp_ratio, dropout, process_unit, memory_init, token_learner,
            position_embedding, layer_repeats, post_norm, cache_reads, cache_writes,
        )


class TTM(TokenTuringMachine):
    """Token Turing Machine (Ryoo et al., CVPR 2023), LMTTM's predecessor and ablation baseline.

    One memory of ``memory_tokens`` tokens is read whole (``r`` tokens) and rewritten whole at every step.
    See :class:`TokenTuringMachine` for the arguments and shapes. The defaults are the LMTTM authors' TTM; the
    Token Turing Machine as scenic implements it is
    ``TTM(..., token_learner="scenic", position_embedding=False, memory_init="zeros", process_unit="transformer")``
    (the bundle's ``ttm_scenic.json`` overlay).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 3,
        dim: int = 448,
        memory_tokens: int = 448,
        read_tokens: int = 8,
        num_layers: int = 1,
        num_heads: int = 8,
        mlp_ratio: float = 3.0,
        dropout: float = 0.2,
        process_unit: str = "transformer",
        memory_init: str = "learned",
        token_learner: str = "lmttm",
        position_embedding: bool = True,
        layer_repeats: int = 1,
        post_norm: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, out_channels, img_size, patch_size, dim, memory_tokens, None, read_tokens,
            num_layers, num_heads, mlp_ratio, dropout, process_unit, memory_init, token_learner, position_embedding,
            layer_repeats, post_norm, False, False,
        )
