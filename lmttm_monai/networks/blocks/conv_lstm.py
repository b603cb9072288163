"""Convolutional LSTM cell for 2D and 3D feature maps, exposing its gates and states.

Shi et al., "Convolutional LSTM Network", NeurIPS 2015, in the form used by SALSTM and LSTMSA (Ji, Ye, Ma,
"Sparse Coding Inspired LSTM and Self-Attention Integration for Medical Image Segmentation", IEEE TIP
33:6098-6113, 2024): one convolution over ``[x_t ; h_{t-1}]`` gives all four gates, and the attention modules
of that paper read the gates and states of the last step, so the cell returns all of them.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from monai.networks.layers import Conv

__all__ = ["ConvLSTMState", "ConvLSTMCell"]


class ConvLSTMState(NamedTuple):
    """Everything one ConvLSTM step computes, each ``[B, hidden_channels, *spatial]``, with the paper's names.

    ``h``: hidden state, ``c``: cell state, ``i`` / ``f`` / ``o``: input, forget and output gates (sigmoid),
    ``g``: candidate cell input (tanh).
    """

    h: torch.Tensor
    c: torch.Tensor
    i: torch.Tensor
    f: torch.Tensor
    o: torch.Tensor
    g: torch.Tensor


class ConvLSTMCell(nn.Module):
    """One step of a convolutional LSTM over ``spatial_dims``-D feature maps (Shi et al., NeurIPS 2015).

    ``i, f, o = sigmoid(.)``, ``g = tanh(.)`` from one convolution of ``[x_t ; h_{t-1}]``;
    ``c_t = f * c_{t-1} + i * g`` and ``h_t = o * tanh(c_t)``. The state starts at zero for every sequence
    (a missing ``state``), so nothing survives a forward call.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input ``x_t``.
        hidden_channels: channels of ``h`` and ``c`` (the authors use 64).
        kernel_size: odd kernel size of the gate convolution (the authors use 5); padding keeps the size.
        bias: whether the gate convolution has a bias.

    Shapes:
        ``forward(x, state)``: ``x`` ``[B, in_channels, *spatial]``, ``state`` ``(h, c)`` each
        ``[B, hidden_channels, *spatial]`` or ``None`` -> :class:`ConvLSTMState`, each field
        ``[B, hidden_channels, *spatial]``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, hidden_channels: int, kernel_size: int = 3, bias: bool = True
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1 or hidden_channels < 1:
            raise ValueError(f"in_channels and hidden_channels must be positive, got {in_channels}, {hidden_channels}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number (padding keeps the size), got {kernel_size}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.gates = conv_type(
            in_channels + hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )

    def forward(self, x: torch.Tensor, state: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> ConvLSTMState:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                "ConvLSTMCell expects x of shape [B, {}, *spatial] with {} spatial dimensions, got {}.".format(
                    self.in_channels, self.spatial_dims, list(x.shape)
                )
            )
        if state is None:
            zeros = x.new_zeros((x.shape[0], self.hidden_channels) + x.shape[2:])
            h, c = zeros, zeros
        else:
            h, c = state
            expected = [x.shape[0], self.hidden_channels] + list(x.shape[2:])
            if list(h.shape) != expected or list(c.shape) != expected:
                raise ValueError(
                    "ConvLSTMCell expects a state (h, c) of shape {} each, got {} and {}.".format(
                        expected, list(h.shape), list(c.shape)
                    )
                )
        i, f, o, g = torch.chunk(self.gates(torch.cat([x, h], dim=1)), 4, dim=1)
        i, f, o, g = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return ConvLSTMState(h, c, i, f, o, g)
