"""Memory-Attention (MAM): self-attention whose query carries a memory of the earlier blocks in a chain.

Block ``t`` of a memory chain computes its query, key and value as usual and then uses the memory-augmented
query ``Qhat_t = Q_t + Qhat_{t-1}`` (``Qhat_0 = 0``): the memory is the running sum of the query projections
of all earlier blocks ("long-term memory"), the attention itself ``softmax(Qhat_t K_t^T / sqrt(d)) V_t`` is the
"working memory". ``Qhat_t`` is handed on un-detached, so gradients reach every earlier query projection.

The mechanism adds no parameter and one element-wise add per block. The classes here subclass MONAI's own
attention blocks and keep every parameter name and shape, so MONAI state dicts load with ``strict=True``; with
``memory=None`` each block computes exactly MONAI's self-attention. Only ``forward`` differs: it takes and
returns the memory, ``(x, memory) -> (out, memory)``. The chain itself (which block hands memory to which) is
owned by the networks, see :mod:`lmttm_monai.networks.nets.memory_attention`.

Reference: the Memory-Attention mechanism with its Sequential (STS) and In-Stage (ISTS) Transmission
Strategies, from the authors' Memory-Attention / Recurrent-Attention release (see ``docs/mam.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from monai.networks.blocks import SABlock, TransformerBlock
from monai.networks.nets.swin_unetr import (
    BasicLayer,
    SwinTransformerBlock,
    WindowAttention,
    compute_mask,
    get_window_size,
    window_partition,
    window_reverse,
)
from torch import nn

__all__ = [
    "MemoryBasicLayer",
    "MemoryResample",
    "MemorySABlock",
    "MemorySwinTransformerBlock",
    "MemoryTransformerBlock",
    "MemoryWindowAttention",
]


class MemorySABlock(SABlock):
    """MONAI ``SABlock`` with memory-augmented queries (MAM).

    Same constructor and parameters as :class:`monai.networks.blocks.SABlock`.

    ``forward(x, memory=None, attn_mask=None) -> (out, memory)``:

    - ``x``: ``[B, N, hidden_size]`` tokens.
    - ``memory``: ``[B, num_heads, N, dim_head]`` query memory of the earlier blocks of the chain, or ``None``
      (first block of a chain, or memory switched off: then the block is exactly ``SABlock``).
    - returns ``out`` ``[B, N, hidden_size]`` and the new memory ``Qhat`` (``[B, num_heads, N, dim_head]``).
    """

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        memory: Optional[torch.Tensor] = None,  # noqa: UP045 (TorchScript reads the annotation)
        attn_mask: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.use_combined_linear:
            qkv = self.input_rearrange(self.qkv(x))
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            q = self.input_rearrange(self.to_q(x))
            k = self.input_rearrange(self.to_k(x))
            v = self.input_rearrange(self.to_v(x))
        if memory is not None:
            q = q + memory  # the one operation MAM adds: long-term memory joins the current query
        memory_out = q
        if self.attention_dtype is not None:
            q = q.to(self.attention_dtype)
            k = k.to(self.attention_dtype)

        if self.use_flash_attention:
            x = F.scaled_dot_product_attention(
                query=q, key=k, value=v, attn_mask=attn_mask, scale=self.scale,
                dropout_p=self.dropout_rate if self.training else 0.0, is_causal=self.causal,
            )  # fmt: skip
        else:
            att_mat = torch.einsum("blxd,blyd->blxy", q, k) * self.scale
            if self.rel_positional_embedding is not None:
                att_mat = self.rel_positional_embedding(x, att_mat, q)
            if self.causal:
                if attn_mask is not None:
                    raise ValueError("Causal attention does not support attention masks.")
                n = x.shape[-2]
                att_mat = att_mat.masked_fill(self.causal_mask[:, :, :n, :n] == 0, float("-inf"))
            if attn_mask is not None:
                mask = attn_mask.unsqueeze(1).unsqueeze(2).expand(-1, self.num_heads, -1, -1)
                att_mat = att_mat.masked_fill(mask == 0, float("-inf"))
            att_mat = att_mat.softmax(dim=-1)
            if self.save_attn:
                self.att_mat = att_mat.detach()
            x = torch.einsum("bhxy,bhyd->bhxd", self.drop_weights(att_mat), v)

        x = self.out_proj(self.out_rearrange(x))
        return self.drop_output(x), memory_out


class MemoryTransformerBlock(TransformerBlock):
    """MONAI ``TransformerBlock`` whose self-attention is :class:`MemorySABlock`.

    ``forward(x, memory=None, context=None, attn_mask=None) -> (x, memory)``; shapes as in
    :class:`MemorySABlock`. Build it like ``TransformerBlock``, or convert a built one with
    :func:`lmttm_monai.networks.nets.to_memory_attention`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attn.__class__ = MemorySABlock  # same module, same parameters: only its forward changes
        self.freeze_unused_parameters()

    def freeze_unused_parameters(self) -> None:
        """Stop ``norm_cross_attn`` from asking for a gradient when there is no cross-attention.

        MONAI's ``TransformerBlock`` builds that LayerNorm whether or not cross-attention is on, and without it the
        LayerNorm never takes part in ``forward``: DistributedDataParallel then waits for its gradient and fails
        at the second iteration. Freezing it (rather than deleting it) keeps every state-dict key, so MONAI
        weights still load with ``strict=True``. Called again by ``to_memory_attention`` after a conversion.
        """
        if not self.with_cross_attention:
            self.norm_cross_attn.requires_grad_(False)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        memory: Optional[torch.Tensor] = None,  # noqa: UP045
        context: Optional[torch.Tensor] = None,  # noqa: UP045
        attn_mask: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attended, memory_out = self.attn(self.norm1(x), memory, attn_mask)
        x = x + attended
        if self.with_cross_attention:
            x = x + self.cross_attn(self.norm_cross_attn(x), context=context)
        x = x + self.mlp(self.norm2(x))
        return x, memory_out


class MemoryWindowAttention(WindowAttention):
    """SwinUNETR's ``WindowAttention`` (relative position bias, shifted-window mask) with memory-augmented queries.

    ``forward(x, mask, memory=None) -> (out, memory)``:

    - ``x``: ``[B * num_windows, N, C]`` window tokens; ``mask``: ``[num_windows, N, N]`` or ``None``.
    - ``memory``: ``[B * num_windows, num_heads, N, C // num_heads]``, the query memory per window and head, in
      the same window partition as ``x`` (the caller partitions it), or ``None``.
    - returns ``out`` ``[B * num_windows, N, C]`` and the new memory, same layout as ``memory``.
    """

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor],  # noqa: UP045
        memory: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if memory is not None:
            q = q + memory
        memory_out = q
        index = self.relative_position_index.clone()[:n, :n].reshape(-1)  # type: ignore[operator]
        relative_position_bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)
        if self.use_flash_attention and not torch.jit.is_scripting() and not torch.is_grad_enabled():
            bias = relative_position_bias.unsqueeze(0)
            if mask is not None:  # one additive bias: relative positions plus the shifted-window mask
                nw = mask.shape[0]
                bias = relative_position_bias.view(1, 1, self.num_heads, n, n) + mask.reshape(1, nw, 1, n, n)
                bias = bias.expand(b // nw, nw, self.num_heads, n, n).reshape(b, self.num_heads, n, n)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=0.0, scale=self.scale)
        else:
            # the additions in MONAI's order, so that without memory the result is bit-identical
            attn = (q * self.scale) @ k.transpose(-2, -1) + relative_position_bias.unsqueeze(0)
            if mask is not None:
                nw = mask.shape[0]
                attn = attn.view(b // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
                attn = attn.view(-1, self.num_heads, n, n)
            x = self.attn_drop(self.softmax(attn)).to(v.dtype) @ v
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))
        return x, memory_out


def _to_windows(grid: torch.Tensor, window_size: Sequence[int], shift_size: Sequence[int]) -> torch.Tensor:
    """``[B, *spatial, C]`` (spatial a multiple of ``window_size``) -> cyclic shift -> ``[B * nW, N, C]``."""
    if any(s > 0 for s in shift_size):
        grid = torch.roll(grid, shifts=[-s for s in shift_size], dims=list(range(1, len(shift_size) + 1)))
    return window_partition(grid, window_size)


def _from_windows(
    windows: torch.Tensor, window_size: Sequence[int], shift_size: Sequence[int], dims: list[int]
) -> torch.Tensor:
    """Inverse of :func:`_to_windows`: ``[B * nW, N, C]`` -> ``[B, *spatial, C]`` with the shift undone."""
    grid = window_reverse(windows.reshape(-1, *window_size, windows.shape[-1]), window_size, dims)
    if any(s > 0 for s in shift_size):
        grid = torch.roll(grid, shifts=list(shift_size), dims=list(range(1, len(shift_size) + 1)))
    return grid


class MemorySwinTransformerBlock(SwinTransformerBlock):
    """SwinUNETR's ``SwinTransformerBlock`` with :class:`MemoryWindowAttention`.

    ``forward(x, mask_matrix, memory=None) -> (x, memory)`` with ``x`` ``[B, *spatial, C]`` (channels last, as in
    MONAI) and ``memory`` ``[B, *spatial, C]`` or ``None``. The memory is kept on the token grid, unshifted, so
    every entry stays with its token: each block pads, cyclically shifts and window-partitions the memory
    exactly as it does ``x``, and undoes the shift on the new memory. (The authors' release hands window-layout
    memory from a regular-window block to the next shifted-window block without the shift, so each entry lands
    on a displaced token; this class does not.) Channel ``h * head_dim + j`` of the grid memory is head ``h``,
    feature ``j``, so the memory is still kept per window and per head.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attn.__class__ = MemoryWindowAttention

    def forward_part1(  # type: ignore[override]
        self,
        x: torch.Tensor,
        mask_matrix: Optional[torch.Tensor],  # noqa: UP045
        memory: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = list(x.shape[1:-1])
        b, c = x.shape[0], x.shape[-1]
        window_size, shift_size = get_window_size(tuple(spatial), self.window_size, self.shift_size)
        pad = [(w - s % w) % w for s, w in zip(spatial, window_size)]
        # F.pad lists the last dimension first: channels (0, 0), then the spatial dims in reverse order
        padding = [0, 0] + [v for p in reversed(pad) for v in (0, p)]
        x = F.pad(self.norm1(x), padding)
        dims = [b] + [s + p for s, p in zip(spatial, pad)]
        shifted = any(s > 0 for s in shift_size)
        attn_mask = mask_matrix if shifted else None
        window_memory = None
        if memory is not None:
            window_memory = _to_windows(F.pad(memory, padding), window_size, shift_size)
            window_memory = window_memory.reshape(*window_memory.shape[:2], self.num_heads, c // self.num_heads)
            window_memory = window_memory.transpose(1, 2)
        out, memory_out = self.attn(_to_windows(x, window_size, shift_size), attn_mask, window_memory)
        x = _from_windows(out, window_size, shift_size, dims)
        memory_grid = _from_windows(memory_out.transpose(1, 2).reshape(out.shape), window_size, shift_size, dims)
        crop = (slice(None),) + tuple(slice(0, s) for s in spatial)
        return x[crop].contiguous(), memory_grid[crop].contiguous()

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        mask_matrix: Optional[torch.Tensor],  # noqa: UP045
        memory: Optional[torch.Tensor] = None,  # noqa: UP045
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shortcut = x
        if self.use_checkpoint:
            x, memory_out = checkpoint.checkpoint(self.forward_part1, x, mask_matrix, memory, use_reentrant=False)
        else:
            x, memory_out = self.forward_part1(x, mask_matrix, memory)
        x = shortcut + self.drop_path(x)
        if self.use_checkpoint:
            x = x + checkpoint.checkpoint(self.forward_part2, x, use_reentrant=False)
        else:
            x = x + self.forward_part2(x)
        return x, memory_out


class MemoryBasicLayer(BasicLayer):
    """One SwinUNETR stage (``BasicLayer``) of :class:`MemorySwinTransformerBlock` s.

    ``forward(x, memory=None, chain=True) -> (x, memory)``:

    - ``x``: ``[B, C, *spatial]``; returns the stage output after patch merging, as ``BasicLayer`` does.
    - ``memory``: ``[B, *spatial, C]`` memory entering the stage's first block (``None`` starts a fresh chain:
      the In-Stage Transmission Strategy empties the memory at each patch-merging boundary).
    - ``chain``: hand each block's memory to the next block; ``False`` switches memory off (plain Swin).
    - the returned memory is the last block's, ``[B, *spatial, C]`` at the stage's resolution before merging
      (``None`` when ``chain`` is ``False``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.use_hyena:
            raise ValueError("Memory-Attention needs windowed self-attention; a Hyena stage has no query to extend.")
        for block in self.blocks:
            block.__class__ = MemorySwinTransformerBlock
            block.attn.__class__ = MemoryWindowAttention

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        memory: Optional[torch.Tensor] = None,  # noqa: UP045
        chain: bool = True,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:  # noqa: UP045
        spatial = list(x.shape[2:])
        window_size, shift_size = get_window_size(tuple(spatial), self.window_size, self.shift_size)
        padded = [-(-s // w) * w for s, w in zip(spatial, window_size)]
        attn_mask = compute_mask(padded, window_size, shift_size, x.device)
        x = x.movedim(1, -1)  # channels last, as the Swin blocks expect
        if not chain:
            memory = None
        for block in self.blocks:
            x, block_memory = block(x, attn_mask, memory)
            memory = block_memory if chain else None
        if self.downsample is not None:
            x = self.downsample(x)
        return x.movedim(-1, 1).contiguous(), memory


class MemoryResample(nn.Module):
    """Learned resampling of a Swin stage's memory to the next stage (STS on a hierarchical network).

    A strided convolution (kernel 2, stride 2) halves the grid as patch merging does (odd sizes padded first)
    and projects ``C -> 2C`` channels. Shapes: ``[B, *spatial, C] -> [B, *ceil(spatial / 2), 2C]``.
    These are the only parameters Memory-Attention ever adds, and only for ``transmission="sts"`` on Swin.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}.")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.conv = conv(channels, 2 * channels, kernel_size=2, stride=2)

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        if memory.ndim != self.spatial_dims + 2 or memory.shape[-1] != self.channels:
            raise ValueError(
                "MemoryResample expects memory of shape [B, *spatial, {}] with {} spatial dimensions, got {}.".format(
                    self.channels, self.spatial_dims, list(memory.shape)
                )
            )
        x = memory.movedim(-1, 1)
        odd = [s % 2 for s in x.shape[2:]]
        x = F.pad(x, [v for p in reversed(odd) for v in (0, p)])
        return self.conv(x).movedim(1, -1)
