"""Process unit of the Token Turing Machine family (LMTTM calls it the Memory Distillation Unit, MDU).

It maps the tokens read from memory to the same number of output tokens ``O_t``. Three kinds, as in the
ablations of TTM (Ryoo et al., CVPR 2023) and LMTTM (Wei et al., CMPB 2025):

- ``"transformer"`` (default): pre-norm transformer encoder layers (:class:`torch.nn.TransformerEncoderLayer`,
  GELU) with ``batch_first=True``, so samples never attend to each other (the authors' layers were not batch
  first, so attention ran across the batch). With ``post_norm`` the layers are the LMTTM authors': post-norm,
  ReLU, no LayerNorm after the stack (torch's ``TransformerEncoderLayer`` defaults), and with ``layer_repeats=3``
  one layer applied three times with shared weights, as their MDU does;
- ``"mixer"``: MLP-Mixer blocks (Tolstikhin et al., NeurIPS 2021), token mixing then channel mixing;
- ``"mlp"``: a per-token residual MLP, no interaction between tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import MLPBlock

__all__ = ["ProcessUnit", "MixerBlock", "PROCESS_UNITS"]

PROCESS_UNITS = ("transformer", "mixer", "mlp")


class MixerBlock(nn.Module):
    """One MLP-Mixer block over ``[B, N, C]``: an MLP across the ``N`` tokens, then one across channels."""

    def __init__(self, dim: int, num_tokens: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = MLPBlock(num_tokens, max(num_tokens * 2, 1), dropout)
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


class _ResidualMLP(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class ProcessUnit(nn.Module):
    """A stack of ``num_layers`` token-processing blocks of one ``kind``, applied ``layer_repeats`` times with
    shared weights, then a LayerNorm (not with ``post_norm``).

    Args:
        kind: ``"transformer"``, ``"mixer"`` or ``"mlp"``.
        dim: token width ``C``.
        num_tokens: tokens processed per step (``r`` for TTM, ``3 r`` for LMTTM); the mixer needs it.
        num_layers: number of blocks.
        num_heads: attention heads (transformer); must divide ``dim``.
        mlp_ratio: hidden width of the MLPs as a multiple of ``dim``.
        dropout: dropout rate in the blocks.
        layer_repeats: how many times the stack is applied, with the same weights each time (the LMTTM authors'
            MDU: one layer, 3 times).
        post_norm: transformer only: post-norm ReLU layers and no final LayerNorm, as the LMTTM authors' MDU
            (``False``: pre-norm GELU layers and a final LayerNorm, as ViT and scenic's TTM).

    Shapes: ``[B, num_tokens, C] -> [B, num_tokens, C]``.
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        num_tokens: int,
        num_layers: int = 1,
        num_heads: int = 8,
        mlp_ratio: float = 3.0,
        dropout: float = 0.0,
        layer_repeats: int = 1,
        post_norm: bool = False,
    ) -> None:
        super().__init__()
        if kind not in PROCESS_UNITS:
            raise ValueError(f"process unit must be one of {PROCESS_UNITS}, got {kind!r}.")
        if num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers}.")
        if kind == "transformer" and (num_heads < 1 or dim % num_heads != 0):
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        if layer_repeats < 1:
            raise ValueError(f"layer_repeats must be a positive integer, got {layer_repeats}.")
        if post_norm and kind != "transformer":
            raise ValueError(f"post_norm applies to the transformer process unit only, got {kind!r}.")
        if dim < 1 or num_tokens < 1:
            raise ValueError(f"dim and num_tokens must be positive, got {dim} and {num_tokens}.")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}.")
        self.dim = dim
        # only the mixer's token MLP fixes the number of tokens; the other kinds take any number
        self.num_tokens = num_tokens if kind == "mixer" else -1
        mlp_dim = int(dim * mlp_ratio)
        blocks: list[nn.Module] = []
        for _ in range(num_layers):
            if kind == "transformer":
                blocks.append(
                    nn.TransformerEncoderLayer(
                        dim,
                        num_heads,
                        mlp_dim,
                        dropout,
                        activation="relu" if post_norm else "gelu",
                        batch_first=True,
                        norm_first=not post_norm,
                    )
                )
            elif kind == "mixer":
                blocks.append(MixerBlock(dim, num_tokens, mlp_dim, dropout))
            else:
                blocks.append(_ResidualMLP(dim, mlp_dim, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.layer_repeats = layer_repeats
        self.norm = nn.Identity() if post_norm else nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[2] != self.dim or (self.num_tokens > 0 and x.shape[1] != self.num_tokens):
            tokens = "N" if self.num_tokens < 0 else str(self.num_tokens)
            raise ValueError(
                "ProcessUnit expects tokens of shape [B, {}, {}], got {}.".format(tokens, self.dim, list(x.shape))
            )
        for _ in range(self.layer_repeats):
            x = self.blocks(x)
        return self.norm(x)
