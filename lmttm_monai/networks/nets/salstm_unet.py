"""A U-shaped CNN shared over adjacent slices or sub-volumes, with SALSTM or LSTMSA between them.

Ji, Ye, Ma, "Sparse Coding Inspired LSTM and Self-Attention Integration for Medical Image Segmentation",
IEEE Transactions on Image Processing 33:6098-6113, 2024 (code: github.com/yeshunlong/SALSTM).

As in the authors' released code, one U-shaped network (here MONAI's :class:`~monai.networks.nets.BasicUNet`)
maps every element of a short sequence (previous, current, next) to a feature map; a forward LSTM runs over
(previous, current), a reverse LSTM over (next, current), each followed by SALSTM or LSTMSA attention on the
states of its last step, and a 1x1 convolution of the two outputs, concatenated, gives the classes of the
current element. With ``attention="none"`` the network is exactly the plain U-shaped net on the current element,
which is the paper's baseline and the ablation in one argument; ``context_channels=True`` gives that net all the
elements as input channels instead (a 2.5D U-Net), which separates what the context adds from what the LSTM
attention adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
from monai.networks.layers import Conv
from monai.networks.nets import BasicUNet
from monai.utils import ensure_tuple_rep

from lmttm_monai.networks.blocks.lstm_attention import LSTM_ATTENTIONS, SelfAttentionLSTM

__all__ = ["SALSTM_ATTENTIONS", "SALSTMUNet"]

SALSTM_ATTENTIONS = LSTM_ATTENTIONS + ("none",)


class SALSTMUNet(nn.Module):
    """Segment the middle element of a sequence of adjacent slices (2D) or sub-volumes (3D).

    Ji, Ye, Ma, IEEE TIP 33:6098-6113, 2024. ``spatial_dims=2``: 2.5D over adjacent slices of a volume, or a
    single 2D image as a sequence of one (``context=1``). ``spatial_dims=3``: adjacent sub-volumes along an axis.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of one sequence element (1 for a grey slice).
        out_channels: number of classes.
        context: odd sequence length ``T``; element ``T // 2`` is the one segmented. The forward LSTM runs over
            elements ``0 .. T // 2``, the reverse one over ``T - 1 .. T // 2``. 3 is the paper's setting.
        attention: ``"salstm"``, ``"lstmsa"`` or ``"none"`` (the plain U-shaped net on the middle element).
        context_channels: with ``attention="none"`` only: the plain U-shaped net takes all ``T`` elements as
            ``T * in_channels`` input channels instead of the middle one alone.
        features: the six feature sizes of :class:`~monai.networks.nets.BasicUNet`.
        hidden_channels: channels of the U-shaped net's output features and of both LSTMs (the authors use 64).
        kernel_size: odd kernel of the LSTM gate convolutions (the authors use 5).
        scale: attention scale; ``None`` is ``1 / sqrt(number of spatial positions)``.
        act, norm, bias, dropout, upsample: as in :class:`~monai.networks.nets.BasicUNet`. Keep a per-sample
            norm (the default instance norm) so that the samples of a batch do not interact.

    Shapes:
        ``forward(x)``: ``x`` ``[B, T * in_channels, *spatial]`` (element ``t`` in channels
        ``t * in_channels .. (t + 1) * in_channels - 1``) or ``[B, T, in_channels, *spatial]``
        -> logits ``[B, out_channels, *spatial]`` of the middle element. Every spatial size must be divisible
        by 16 (the four poolings of the U-shaped net), and with instance norm (the default) at least one must be
        32 or more (the 1/16 bottleneck needs more than one position). Other shapes raise ``ValueError``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        context: int = 3,
        attention: str = "salstm",
        context_channels: bool = False,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        hidden_channels: int = 32,
        kernel_size: int = 3,
        scale: Optional[float] = None,
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        if context < 1 or context % 2 == 0:
            raise ValueError(f"context must be a positive odd number (previous, current, next), got {context}.")
        if attention not in SALSTM_ATTENTIONS:
            raise ValueError(f"attention must be one of {SALSTM_ATTENTIONS}, got {attention!r}.")
        if context_channels and attention != "none":
            raise ValueError(f"context_channels=True needs attention='none' (the plain U-shaped net), got {attention!r}")
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be positive, got {hidden_channels}.")
        if any(f < 1 for f in ensure_tuple_rep(features, 6)):
            raise ValueError(f"features must be six positive sizes, got {tuple(features)}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.context = context
        self.attention = attention
        self.context_channels = bool(context_channels)
        unet_in = context * in_channels if context_channels else in_channels
        unet_out = out_channels if attention == "none" else hidden_channels
        self.unet = BasicUNet(spatial_dims, unet_in, unet_out, features, act, norm, bias, dropout, upsample)
        # instance norm cannot normalise a single position: at the 1/16 bottleneck it would fail inside torch
        self.single_position_bottleneck_fails = any(
            isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in self.unet.down_4.modules()
        )
        # absent parts are None, which TorchScript prunes, so "none" scripts to the plain U-shaped net
        lstm = attention != "none"
        self.forward_lstm = (
            SelfAttentionLSTM(spatial_dims, hidden_channels, hidden_channels, kernel_size, attention, scale)
            if lstm
            else None
        )
        self.reverse_lstm = (
            SelfAttentionLSTM(spatial_dims, hidden_channels, hidden_channels, kernel_size, attention, scale)
            if lstm
            else None
        )
        self.head = Conv[Conv.CONV, spatial_dims](2 * hidden_channels, out_channels, kernel_size=1) if lstm else None

    def _check_spatial_size(self, shape: list[int]) -> None:
        # plain loops: TorchScript has no generator expressions
        positions = 1
        for s in shape[len(shape) - self.spatial_dims :]:
            if s < 16 or s % 16 != 0:
                raise ValueError(
                    "expected every spatial size to be a positive multiple of 16 (the four poolings of the "
                    "U-shaped net), got input shape {}.".format(shape)
                )
            positions *= s // 16
        if self.single_position_bottleneck_fails and positions < 2:
            raise ValueError(
                "expected at least one spatial size of 32 or more: with instance norm the 1/16 bottleneck of the "
                "U-shaped net needs more than one position, got input shape {}.".format(shape)
            )

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[B, T, in_channels, *spatial]``, from either documented layout; ``ValueError`` otherwise."""
        if x.ndim == self.spatial_dims + 2 or x.ndim == self.spatial_dims + 3:
            self._check_spatial_size(list(x.shape))
        if x.ndim == self.spatial_dims + 2:
            if x.shape[1] != self.context * self.in_channels:
                raise ValueError(
                    "expected {} channels (context {} x in_channels {}), got input shape {}.".format(
                        self.context * self.in_channels, self.context, self.in_channels, list(x.shape)
                    )
                )
            return x.reshape([x.shape[0], self.context, self.in_channels] + list(x.shape[2:]))
        if x.ndim == self.spatial_dims + 3:
            if x.shape[1] != self.context or x.shape[2] != self.in_channels:
                raise ValueError(
                    "expected [B, {}, {}, *spatial] (context, in_channels), got input shape {}.".format(
                        self.context, self.in_channels, list(x.shape)
                    )
                )
            return x
        raise ValueError(
            "expected [B, T * C, *spatial] or [B, T, C, *spatial] with {} spatial dimensions, got shape {}.".format(
                self.spatial_dims, list(x.shape)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sequence(x)
        batch, steps = x.shape[0], x.shape[1]
        current = steps // 2
        if self.head is None:
            return self.unet(x.flatten(1, 2) if self.context_channels else x[:, current])
        else:
            # one U-shaped net shared by all elements: fold the sequence into the batch
            features = self.unet(x.flatten(0, 1))
            features = features.reshape([batch, steps] + list(features.shape[1:]))
            forward = self.forward_lstm(features[:, : current + 1])  # previous ..., current
            reverse = self.reverse_lstm(features[:, current:].flip(1))  # next ..., current
            return self.head(torch.cat([forward, reverse], dim=1))
