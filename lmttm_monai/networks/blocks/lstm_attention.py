"""SALSTM and LSTMSA: self-attention whose query, key and value come from the states of a ConvLSTM.

Ji, Ye, Ma, "Sparse Coding Inspired LSTM and Self-Attention Integration for Medical Image Segmentation",
IEEE Transactions on Image Processing 33:6098-6113, 2024 (code: github.com/yeshunlong/SALSTM).

Both modules read the states of the last step of a ConvLSTM (:class:`ConvLSTMState`) and attend channel to
channel: with ``N`` spatial positions flattened, ``A = softmax(Q K^T * s)`` is ``C x C`` and the output is
``A V`` (``C x N``), so the cost is linear in ``N``.

- SALSTM: the states themselves, no learned projections: ``Q = (c + f) / 2``, ``K = (g + h) / 2``, ``V = h``.
- LSTMSA: learned per-position ``C -> C`` projections of ``h`` (1x1 convolutions; the authors' ``nn.Linear``
  over channels), each gated element-wise by the same state combination: ``Q = W_q h * (c + f) / 2``,
  ``K = W_k h * (g + h) / 2``, ``V = W_v h * h``.

The scale ``s`` defaults to ``1 / sqrt(N)`` of the actual input; the authors hard-code a constant for their
224 x 224 maps, which is wrong for any other size.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from monai.networks.layers import Conv

from lmttm_monai.networks.blocks.conv_lstm import ConvLSTMCell, ConvLSTMState

__all__ = ["LSTM_ATTENTIONS", "channel_attention", "SALSTMAttention", "LSTMSAAttention", "SelfAttentionLSTM"]

LSTM_ATTENTIONS = ("salstm", "lstmsa")


def channel_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """``softmax(Q K^T * scale) V`` over channels: ``[B, C, *spatial]`` each -> ``[B, C, *spatial]``.

    ``scale`` defaults to ``1 / sqrt(N)`` with ``N`` the number of spatial positions (the length of the dot
    products), which keeps the logits of the ``C x C`` map at the same magnitude for any image size.
    """
    b, c = value.shape[0], value.shape[1]
    q, k, v = query.reshape(b, c, -1), key.reshape(b, c, -1), value.reshape(b, c, -1)
    s = 1.0 / math.sqrt(v.shape[-1]) if scale is None else scale
    weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * s, dim=-1)  # [B, C, C], rows sum to one
    return torch.bmm(weights, v).reshape(value.shape)


def _check_scale(scale: Optional[float]) -> None:
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be a positive number or None (1 / sqrt(number of positions)), got {scale}.")


class SALSTMAttention(nn.Module):
    """SALSTM attention: ``Q = (c + f) / 2``, ``K = (g + h) / 2``, ``V = h`` from the LSTM states; no parameters.

    Ji, Ye, Ma, IEEE TIP 33:6098-6113, 2024.

    Args:
        scale: multiplier of ``Q K^T``; ``None`` is ``1 / sqrt(N)`` for ``N`` spatial positions of the input.

    Shapes:
        ``forward(states)``: :class:`ConvLSTMState` with fields ``[B, C, *spatial]`` -> ``[B, C, *spatial]``.
    """

    def __init__(self, scale: Optional[float] = None) -> None:
        super().__init__()
        _check_scale(scale)
        self.scale = scale

    def forward(self, states: ConvLSTMState) -> torch.Tensor:
        query = (states.c + states.f) / 2
        key = (states.g + states.h) / 2
        return channel_attention(query, key, states.h, self.scale)


class LSTMSAAttention(nn.Module):
    """LSTMSA attention: learned per-position projections of ``h``, gated by the SALSTM state combinations.

    Ji, Ye, Ma, IEEE TIP 33:6098-6113, 2024. ``Q = W_q h * (c + f) / 2``, ``K = W_k h * (g + h) / 2``,
    ``V = W_v h * h`` with ``W_*`` 1x1 convolutions (``C -> C`` at every position), then channel attention.

    Args:
        spatial_dims: 2 or 3.
        channels: ``C``, the hidden channels of the LSTM.
        scale: multiplier of ``Q K^T``; ``None`` is ``1 / sqrt(N)`` for ``N`` spatial positions of the input.

    Shapes:
        ``forward(states)``: :class:`ConvLSTMState` with fields ``[B, C, *spatial]`` -> ``[B, C, *spatial]``.
    """

    def __init__(self, spatial_dims: int, channels: int, scale: Optional[float] = None) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}.")
        _check_scale(scale)
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.query = conv_type(channels, channels, kernel_size=1)
        self.key = conv_type(channels, channels, kernel_size=1)
        self.value = conv_type(channels, channels, kernel_size=1)
        self.scale = scale

    def forward(self, states: ConvLSTMState) -> torch.Tensor:
        h = states.h
        query = self.query(h) * (states.c + states.f) / 2
        key = self.key(h) * (states.g + h) / 2
        value = self.value(h) * h
        return channel_attention(query, key, value, self.scale)


class SelfAttentionLSTM(nn.Module):
    """A ConvLSTM run over a sequence, then SALSTM or LSTMSA attention on the states of its last step.

    Ji, Ye, Ma, IEEE TIP 33:6098-6113, 2024 (the authors' ``TransLSTM`` / ``GatedTransLSTM``). The LSTM
    summarises the sequence into the states of the last element; the attention reads those states.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each sequence element.
        hidden_channels: LSTM hidden channels, also the output channels.
        kernel_size: odd kernel size of the LSTM gate convolution.
        attention: ``"salstm"`` or ``"lstmsa"``.
        scale: attention scale; ``None`` is ``1 / sqrt(number of spatial positions)``.

    Shapes:
        ``forward(x)``: ``x`` ``[B, T, in_channels, *spatial]`` (element ``T - 1`` is the last step)
        -> ``[B, hidden_channels, *spatial]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        attention: str = "salstm",
        scale: Optional[float] = None,
    ) -> None:
        super().__init__()
        if attention not in LSTM_ATTENTIONS:
            raise ValueError(f"attention must be one of {LSTM_ATTENTIONS}, got {attention!r}.")
        self.cell = ConvLSTMCell(spatial_dims, in_channels, hidden_channels, kernel_size)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.attention: nn.Module = (
            SALSTMAttention(scale) if attention == "salstm" else LSTMSAAttention(spatial_dims, hidden_channels, scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 3 or x.shape[1] < 1 or x.shape[2] != self.in_channels:
            raise ValueError(
                "SelfAttentionLSTM expects a sequence of shape [B, T, {}, *spatial] with T >= 1 and {} spatial "
                "dimensions, got {}.".format(self.in_channels, self.spatial_dims, list(x.shape))
            )
        states = self.cell(x[:, 0])
        for t in range(1, x.shape[1]):
            states = self.cell(x[:, t], (states.h, states.c))
        return self.attention(states)
