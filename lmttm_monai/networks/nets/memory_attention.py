"""MONAI's ViT / UNETR and SwinUNETR with Memory-Attention (MAM) in place of self-attention.

Each network here is MONAI's own class, built by MONAI's constructor, whose attention modules are then given
the memory ``forward`` of :mod:`lmttm_monai.networks.blocks.memory_attention`. Nothing else changes: every
parameter keeps its name and shape, so a MONAI ``UNETR`` / ``SwinUNETR`` state dict (BTCV, self-supervised
Swin weights through ``load_from``, or your own) loads with ``strict=True``, and ``transmission="none"``
reproduces MONAI's network exactly.

Transmission strategies (who hands memory to whom):

- ``"sts"``, Sequential Transmission Strategy: one memory chain through all transformer blocks. The default
  for ViT / UNETR, whose token grid never changes. On SwinUNETR it is an ablation: the memory leaving a stage
  is resampled to the next stage's grid and width by :class:`MemoryResample` (new, learned parameters).
- ``"ists"``, In-Stage Transmission Strategy: one chain per Swin stage, emptied at each patch-merging
  boundary, kept per window and head and following the cyclic shift. The default for SwinUNETR.
- ``"none"``: plain self-attention, MONAI's network.

The memory lives in the encoder only, as in the authors' best configuration (memory in the decoder did not help).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from monai.networks.blocks import SABlock, TransformerBlock
from monai.networks.nets import UNETR, ViT, SwinUNETR
from monai.networks.nets.swin_unetr import BasicLayer, SwinTransformer, SwinTransformerBlock, WindowAttention
from monai.utils import ensure_tuple_rep
from torch import nn

from lmttm_monai.networks.blocks.memory_attention import (
    MemoryBasicLayer,
    MemoryResample,
    MemorySABlock,
    MemorySwinTransformerBlock,
    MemoryTransformerBlock,
    MemoryWindowAttention,
)

__all__ = [
    "TRANSMISSIONS",
    "MemorySwinTransformer",
    "MemorySwinUNETR",
    "MemoryUNETR",
    "MemoryViT",
    "load_self_attention_weights",
    "to_memory_attention",
]

TRANSMISSIONS = ("sts", "ists", "none")


def _check_transmission(transmission: str, allowed: tuple[str, ...], owner: str) -> str:
    if transmission not in allowed:
        raise ValueError(f"{owner}: transmission must be one of {allowed}, got {transmission!r}.")
    return transmission


def _arguments(monai_class: type, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of ``monai_class(*args, **kwargs)`` by name, defaults filled in.

    The memory networks take MONAI's constructor as it is (``*args, **kwargs``); binding them to MONAI's own
    signature lets them be checked before MONAI builds anything (MONAI checks few of them, and a bad one
    otherwise shows up as a shape error deep inside ``forward``). A wrong call raises the ``TypeError`` that
    calling MONAI's constructor would.
    """
    bound = inspect.signature(monai_class.__init__).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _check_common(owner: str, spatial_dims: Any, sizes: Mapping[str, Any]) -> int:
    """Check ``spatial_dims`` and that each named size is a positive integer; return ``spatial_dims``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"{owner}: spatial_dims must be 2 or 3, got {spatial_dims}.")
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}.")
    return spatial_dims


def _axes(spatial_dims: int) -> str:
    return "H, W" if spatial_dims == 2 else "H, W, D"


def _record_vit_input(vit: ViT, owner: str, grid: list[int] | None, exact: bool) -> None:
    """Store on ``vit`` what its ``forward`` accepts, so that it can say so instead of failing inside torch.

    MONAI's ViT keeps neither its ``in_channels`` nor its ``img_size``; both are read back from the patch
    embedding. ``grid`` is the patch grid of ``img_size`` when known (``None`` for a ViT converted after it was
    built: then only the number of patches, which the position embedding fixes, is known). ``exact``: the input
    must be exactly ``grid * patch`` (UNETR, whose decoder upsamples the grid back to the input size).
    Plain Python attributes, so no state-dict key changes; TorchScript reads them as constants.
    """
    embedding = vit.patch_embedding
    projection = embedding.patch_embeddings
    if isinstance(projection, nn.Sequential):  # "perceptron": Rearrange(..., p1=.., p2=..) then Linear
        lengths = projection[0].axes_lengths
        patch = [int(lengths[f"p{i + 1}"]) for i in range(len(lengths))]
    else:
        patch = [int(k) for k in projection.kernel_size]
    vit.input_owner = owner
    vit.input_patch = patch
    vit.input_channels = int(embedding.patch_dim) // math.prod(patch)
    vit.input_patches = int(embedding.n_patches)
    # [0, ...] marks an unknown grid (an empty list would leave TorchScript without an element type)
    vit.input_grid = [int(g) for g in grid] if grid is not None else [0] * len(patch)
    vit.input_exact = bool(exact and grid is not None)


class MemoryViT(ViT):
    """MONAI ``ViT`` with one Memory-Attention chain through its transformer blocks.

    Same constructor as :class:`monai.networks.nets.ViT` plus ``transmission`` (``"sts"`` or ``"none"``).
    ``forward(x)`` returns ``(x, hidden_states_out)`` as ``ViT`` does; ``x``: ``[B, in_channels, *spatial]`` whose
    patch grid (``spatial // patch_size``) is that of ``img_size``, else ``ValueError`` naming the expected shape.
    """

    def __init__(self, *args, transmission: str = "sts", **kwargs) -> None:
        owner = type(self).__name__
        arguments = _arguments(ViT, args, kwargs)
        positive = ("in_channels", "hidden_size", "mlp_dim", "num_layers", "num_heads")
        positive += ("num_classes",) if arguments["classification"] else ()
        spatial_dims = _check_common(owner, arguments["spatial_dims"], {n: arguments[n] for n in positive})
        img_size = ensure_tuple_rep(arguments["img_size"], spatial_dims)
        patch_size = ensure_tuple_rep(arguments["patch_size"], spatial_dims)
        if any(p < 1 for p in patch_size) or any(s < p for s, p in zip(img_size, patch_size)):
            raise ValueError(
                f"{owner}: img_size {tuple(img_size)} must hold at least one patch of patch_size "
                f"{tuple(patch_size)} (both positive) along every axis."
            )
        super().__init__(*args, **kwargs)
        _convert_modules(self)
        self.transmission = _check_transmission(transmission, ("sts", "none"), owner)
        _record_vit_input(self, owner, [s // p for s, p in zip(img_size, patch_size)], exact=False)

    def _check_input(self, x: torch.Tensor) -> None:
        """``ValueError`` naming the expected shape; shape arithmetic only, and TorchScript compatible."""
        patch = self.input_patch
        grid = self.input_grid
        spatial = list(x.shape[2:])
        valid = x.ndim == len(patch) + 2 and x.shape[1] == self.input_channels
        if valid:
            if self.input_exact:
                valid = spatial == [g * p for g, p in zip(grid, patch)]
            elif grid[0] > 0:
                valid = [s // p for s, p in zip(spatial, patch)] == grid
            else:
                patches = 1
                for s, p in zip(spatial, patch):
                    patches *= s // p
                valid = patches == self.input_patches
        if not valid:
            axes = "H, W" if len(patch) == 2 else "H, W, D"
            if self.input_exact:
                expected = "[B, {}, {}] (its in_channels and img_size)".format(
                    self.input_channels, str([g * p for g, p in zip(grid, patch)])[1:-1]
                )
            elif grid[0] > 0:
                expected = "[B, {}, {}] with [{}] // {} == {} (the patch grid of its img_size)".format(
                    self.input_channels, axes, axes, patch, grid
                )
            else:
                expected = "[B, {}, {}] whose patch grid [{}] // {} has {} patches (those of its img_size)".format(
                    self.input_channels, axes, axes, patch, self.input_patches
                )
            raise ValueError("{} expects input of shape {}, got {}.".format(self.input_owner, expected, list(x.shape)))

    def forward(self, x):
        self._check_input(x)
        x = self.patch_embedding(x)
        if hasattr(self, "cls_token"):
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        chain = self.transmission == "sts"
        memory: Optional[torch.Tensor] = None  # noqa: UP045
        hidden_states_out = []
        for block in self.blocks:
            x, block_memory = block(x, memory)
            memory = block_memory if chain else None
            hidden_states_out.append(x)
        x = self.norm(x)
        if hasattr(self, "classification_head"):
            x = self.classification_head(x[:, 0])
        return x, hidden_states_out


class MemoryUNETR(UNETR):
    """MONAI ``UNETR`` whose ViT encoder uses Memory-Attention (STS by default), for 2D and 3D.

    Memory-Attention Mechanism: Yang et al., "Memory-Attention ... for medical image segmentation" (the MAM paper,
    docs/mam.md). The arguments are MONAI UNETR's, led by ``spatial_dims`` as in MONAI's other networks.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input image.
        out_channels: channels of the output (classes).
        img_size: the input's spatial size, a multiple of 16 (the ViT patch) along every axis.
        feature_size: width of the CNN decoder's first stage.
        hidden_size: token width of the ViT encoder.
        mlp_dim: width of each transformer block's MLP.
        num_heads: attention heads (``hidden_size`` divisible by it).
        proj_type: patch embedding, ``"conv"`` or ``"perceptron"``.
        norm_name: the decoder's normalisation.
        conv_block: convolutional blocks in the skip paths.
        res_block: residual blocks in the decoder.
        dropout_rate: dropout in the transformer blocks.
        qkv_bias: bias of the attention's query/key/value projection.
        save_attn: keep the attention matrices (``att_mat``) for inspection.
        transmission: ``"sts"`` (one memory chain through the 12 transformer blocks) or ``"none"`` (MONAI's UNETR).

    ``forward``: ``[B, in_channels, *img_size]`` -> ``[B, out_channels, *img_size]``; the input must have exactly
    ``img_size`` (the learned position embedding fixes it). Zero parameters beyond UNETR's. Anything else raises
    ``ValueError`` naming what is expected.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int,
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        proj_type: str = "conv",
        norm_name: tuple | str = "instance",
        conv_block: bool = True,
        res_block: bool = True,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        save_attn: bool = False,
        transmission: str = "sts",
    ) -> None:
        owner = type(self).__name__
        sizes = {"in_channels": in_channels, "out_channels": out_channels, "feature_size": feature_size,
                 "hidden_size": hidden_size, "mlp_dim": mlp_dim, "num_heads": num_heads}  # fmt: skip
        _check_common(owner, spatial_dims, sizes)
        img_size = ensure_tuple_rep(img_size, spatial_dims)
        if any(s < 16 or s % 16 != 0 for s in img_size):
            raise ValueError(
                f"{owner}: img_size must be a positive multiple of 16 (the ViT patch size) along every axis, "
                f"got {tuple(img_size)}."
            )
        super().__init__(
            in_channels, out_channels, img_size, feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim,
            num_heads=num_heads, proj_type=proj_type, norm_name=norm_name, conv_block=conv_block, res_block=res_block,
            dropout_rate=dropout_rate, spatial_dims=spatial_dims, qkv_bias=qkv_bias, save_attn=save_attn,
        )  # fmt: skip
        _check_transmission(transmission, ("sts", "none"), owner)
        _convert_modules(self)
        self.vit.transmission = transmission

    @property
    def transmission(self) -> str:
        return self.vit.transmission


class MemorySwinTransformer(SwinTransformer):
    """SwinUNETR's ``SwinTransformer`` encoder with Memory-Attention stages.

    Same constructor as :class:`monai.networks.nets.swin_unetr.SwinTransformer` plus ``transmission``
    (``"ists"``, ``"sts"`` or ``"none"``). ``forward(x, normalize=True)`` returns the five feature maps as MONAI does.
    """

    def __init__(self, *args, transmission: str = "ists", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _convert_modules(self)
        _set_swin_transmission(self, transmission)

    def _stages(self) -> list[nn.Module]:
        return [self.layers1[0], self.layers2[0], self.layers3[0], self.layers4[0]]

    def _stage_convs(self) -> list[nn.Module]:
        if not self.use_v2:
            return []
        return [self.layers1c[0], self.layers2c[0], self.layers3c[0], self.layers4c[0]]

    def forward(self, x, normalize: bool = True):
        if not torch.jit.is_tracing():  # a traced graph keeps no Python check
            _check_swin_input(self, x, type(self).__name__, 1)
        x = self.pos_drop(self.patch_embed(x))
        outputs = [self.proj_out(x, normalize)]
        convs = self._stage_convs()
        memory: Optional[torch.Tensor] = None  # noqa: UP045
        for i, stage in enumerate(self._stages()):
            if convs:
                x = convs[i](x.contiguous())
            if self.transmission == "sts" and memory is not None:
                memory = self.memory_resample[i - 1](memory)
            elif self.transmission != "sts":
                memory = None  # ISTS: each stage starts an empty chain
            x, memory = stage(x.contiguous(), memory, self.transmission != "none")
            outputs.append(self.proj_out(x, normalize))
        return outputs


class MemorySwinUNETR(SwinUNETR):
    """MONAI ``SwinUNETR`` whose Swin encoder uses Memory-Attention (ISTS by default), for 2D and 3D.

    Memory-Attention Mechanism: the MAM paper (docs/mam.md). The arguments are MONAI SwinUNETR's (its Hyena
    options left out: they replace attention), led by ``spatial_dims`` as in MONAI's other networks.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input image.
        out_channels: channels of the output (classes).
        patch_size: patch size of the Swin embedding.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (int, or one per axis).
        qkv_bias: bias of the attention's query/key/value projection.
        mlp_ratio: MLP width over token width.
        feature_size: token width of the first stage (divisible by 12).
        norm_name: the decoder's normalisation.
        drop_rate, attn_drop_rate, dropout_path_rate: dropout after the embedding, of attention, stochastic depth.
        normalize: layer-normalise the encoder's outputs.
        norm_layer: the Swin blocks' normalisation layer.
        patch_norm: normalise after the patch embedding.
        use_checkpoint: gradient checkpointing (less memory, more time).
        downsample: ``"merging"``, ``"mergingv2"`` or a module.
        use_v2: SwinUNETR-V2 (a residual convolution before each stage).
        transmission: who hands memory to whom.

            - ``"ists"``: a memory chain per stage, emptied at each patch merging; zero extra parameters.
            - ``"sts"``: one chain through all stages, resampled between stages by learned :class:`MemoryResample`
              modules (the paper's ablation; adds ``swinViT.memory_resample.*`` parameters).
            - ``"none"``: MONAI's SwinUNETR.

    ``forward``: ``[B, in_channels, *spatial]`` -> ``[B, out_channels, *spatial]``, each spatial size divisible
    by ``patch_size ** 5`` (32 by default), as for SwinUNETR; with instance norm (the default) the bottleneck at
    ``1 / patch_size ** 5`` must hold more than one position. Anything else raises ``ValueError`` naming what is
    expected. Pretrained self-supervised Swin weights load with the inherited ``load_from``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        patch_size: int = 2,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Sequence[int] | int = 7,
        qkv_bias: bool = True,
        mlp_ratio: float = 4.0,
        feature_size: int = 24,
        norm_name: tuple | str = "instance",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dropout_path_rate: float = 0.0,
        normalize: bool = True,
        norm_layer: type[nn.LayerNorm] = nn.LayerNorm,
        patch_norm: bool = False,
        use_checkpoint: bool = False,
        downsample: str | nn.Module = "merging",
        use_v2: bool = False,
        transmission: str = "ists",
    ) -> None:
        owner = type(self).__name__
        sizes = {"in_channels": in_channels, "out_channels": out_channels, "patch_size": patch_size,
                 "feature_size": feature_size}  # fmt: skip
        _check_common(owner, spatial_dims, sizes)
        window_size = ensure_tuple_rep(window_size, spatial_dims)
        if any(w < 1 for w in window_size):
            raise ValueError(f"{owner}: window_size must be positive along every axis, got {tuple(window_size)}.")
        super().__init__(
            in_channels, out_channels, patch_size=patch_size, depths=depths, num_heads=num_heads,
            window_size=window_size, qkv_bias=qkv_bias, mlp_ratio=mlp_ratio, feature_size=feature_size,
            norm_name=norm_name, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
            dropout_path_rate=dropout_path_rate, normalize=normalize, norm_layer=norm_layer, patch_norm=patch_norm,
            use_checkpoint=use_checkpoint, spatial_dims=spatial_dims, downsample=downsample, use_v2=use_v2,
        )  # fmt: skip
        _convert_modules(self)
        _set_swin_transmission(self.swinViT, transmission)

    @property
    def transmission(self) -> str:
        return self.swinViT.transmission

    def forward(self, x_in):
        # MONAI's SwinUNETR cannot be scripted (bundles trace it), and a traced graph keeps no Python check
        if not torch.jit.is_tracing():
            _check_swin_input(self.swinViT, x_in, type(self).__name__, self.patch_size**5)
            if _has_instance_norm(self.encoder10) and math.prod(s // self.patch_size**5 for s in x_in.shape[2:]) < 2:
                side = self.patch_size**5
                raise ValueError(
                    f"{type(self).__name__} expects at least one spatial size of {2 * side} or more: with instance "
                    f"norm its 1/{side} bottleneck needs more than one position, got {list(x_in.shape)}."
                )
        return super().forward(x_in)


def _has_instance_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in module.modules())


def _check_swin_input(swin: SwinTransformer, x: torch.Tensor, owner: str, multiple: int) -> None:
    """``ValueError`` unless ``x`` is ``[B, in_channels, *spatial]`` with each size a multiple of ``multiple``."""
    spatial_dims = len(swin.window_size)
    in_channels = swin.patch_embed.proj.in_channels
    spatial = list(x.shape[2:])
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels or any(s < 1 or s % multiple for s in spatial):
        rule = f" with {_axes(spatial_dims)} multiples of {multiple} (patch_size ** 5)" if multiple > 1 else ""
        raise ValueError(
            f"{owner} expects input of shape [B, {in_channels}, {_axes(spatial_dims)}]{rule}, got {list(x.shape)}."
        )


# MONAI class -> memory class. The memory classes add no state of their own, so converting a built module
# only changes which ``forward`` it runs; MONAI's constructors (and their defaults and checks) stay the one
# source of truth for the architecture.
_MEMORY_CLASSES: dict[type, type] = {
    SABlock: MemorySABlock,
    TransformerBlock: MemoryTransformerBlock,
    ViT: MemoryViT,
    UNETR: MemoryUNETR,
    WindowAttention: MemoryWindowAttention,
    SwinTransformerBlock: MemorySwinTransformerBlock,
    BasicLayer: MemoryBasicLayer,
    SwinTransformer: MemorySwinTransformer,
    SwinUNETR: MemorySwinUNETR,
}


def _convert_modules(root: nn.Module) -> None:
    for module in root.modules():
        if isinstance(module, BasicLayer) and module.use_hyena:
            raise ValueError("Memory-Attention needs windowed self-attention: build the network with use_hyena=False.")
        memory_class = _MEMORY_CLASSES.get(type(module))
        if memory_class is not None:
            module.__class__ = memory_class
            if memory_class is MemoryTransformerBlock:
                module.freeze_unused_parameters()
    for module in root.modules():
        if isinstance(module, UNETR):  # its decoder fixes the input size: exactly the patch grid times 16
            grid = [int(f) for f in module.feat_size]
            _record_vit_input(module.vit, type(module).__name__, grid, exact=True)
        elif isinstance(module, ViT) and not hasattr(module, "input_owner"):
            _record_vit_input(module, type(module).__name__, None, exact=False)


def _set_swin_transmission(swin: SwinTransformer, transmission: str) -> None:
    _check_transmission(transmission, TRANSMISSIONS, type(swin).__name__)
    swin.transmission = transmission
    if transmission == "sts" and not hasattr(swin, "memory_resample"):
        spatial_dims = len(swin.window_size)
        swin.memory_resample = nn.ModuleList(
            MemoryResample(spatial_dims, int(swin.embed_dim * 2**i)) for i in range(swin.num_layers - 1)
        )


def to_memory_attention(network: nn.Module, transmission: str | None = None) -> nn.Module:
    """Turn a built MONAI ``ViT``, ``UNETR``, ``SwinTransformer`` or ``SwinUNETR`` into its Memory-Attention
    variant, in place, keeping its weights; returns the same object.

    Use it on a network that already holds pretrained self-attention weights (however they were loaded)::

        net = monai.networks.nets.SwinUNETR(in_channels=1, out_channels=14, feature_size=48)
        net.load_from(torch.load("model_swinvit.pt"))        # MONAI's self-supervised Swin weights
        net = to_memory_attention(net)                        # now a MemorySwinUNETR, transmission "ists"

    ``transmission`` defaults to ``"sts"`` for ViT/UNETR and ``"ists"`` for Swin. ``"sts"`` on Swin adds fresh
    :class:`MemoryResample` modules (the only new parameters), placed on the network's device.
    """
    if not isinstance(network, (ViT, UNETR, SwinTransformer, SwinUNETR)):
        raise TypeError(f"expected a MONAI ViT, UNETR, SwinTransformer or SwinUNETR, got {type(network).__name__}.")
    is_swin = isinstance(network, (SwinTransformer, SwinUNETR))
    transmission = transmission or ("ists" if is_swin else "sts")
    _check_transmission(transmission, TRANSMISSIONS if is_swin else ("sts", "none"), type(network).__name__)
    _convert_modules(network)
    if is_swin:
        swin = network.swinViT if isinstance(network, SwinUNETR) else network
        _set_swin_transmission(swin, transmission)
        parameter = next(network.parameters())
        swin.to(device=parameter.device)
    else:
        vit = network.vit if isinstance(network, UNETR) else network
        vit.transmission = transmission
    return network


def _state_dict_of(checkpoint: Any, source: str) -> Mapping[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: a bare state dict, or one under a usual key."""
    if isinstance(checkpoint, nn.Module):
        return checkpoint.state_dict()
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a state dict or a checkpoint dict, got {type(checkpoint).__name__}.")
    for key in ("state_dict", "model", "network", "net"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(f"{source}: no state dict found (looked at the top level and at 'state_dict', 'model', 'net').")


def load_self_attention_weights(
    network: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], strict: bool = True
) -> nn.Module:
    """Load a pretrained MONAI ``UNETR`` / ``SwinUNETR`` checkpoint into a Memory-Attention network.

    ``checkpoint`` is a path (``torch.load``-able) or an already loaded dict: a bare state dict, or a dict with it
    under ``state_dict`` / ``model`` / ``network`` / ``net`` (model-zoo and MONAI ``CheckpointSaver`` files);
    a ``module.`` prefix left by DataParallel/DDP is removed. Because Memory-Attention keeps every parameter
    name, nothing is renamed. With ``transmission="sts"`` on Swin the checkpoint cannot hold the new
    ``swinViT.memory_resample.*`` parameters: those are allowed to be missing (they keep their initialisation)
    and every other key is still checked when ``strict``. Raises ``ValueError`` naming the file on any
    other missing or unexpected key.
    """
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint"
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{source}: checkpoint file not found.")
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    state = dict(_state_dict_of(checkpoint, source))
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict; keep the first one, name the file
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:300])
        raise ValueError(
            f"{source}: does not fit {type(network).__name__}: {detail} (were network arguments such as "
            "feature_size, hidden_size or spatial_dims the same as for the checkpoint?)"
        ) from None
    missing = [k for k in result.missing_keys if ".memory_resample." not in f".{k}"]
    if strict and (missing or result.unexpected_keys):
        raise ValueError(
            f"{source}: does not match {type(network).__name__}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{'...' if len(result.unexpected_keys) > 5 else ''} (were network arguments such as feature_size, "
            "hidden_size or spatial_dims the same as for the checkpoint?)."
        )
    return network
