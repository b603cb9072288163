"""Property-based tests (hypothesis) over input shapes, batch sizes and channel counts for every network and the
main blocks of lmttm_monai.

For each one, two properties:

- valid configurations (spatial_dims, batch size, channels, classes, input sizes the network accepts) give finite
  outputs of exactly the documented shape, in eval mode;
- invalid ones (wrong channel count, wrong rank, a spatial size that is not the required multiple or is below the
  minimum, non-positive sizes, an unsupported spatial_dims) raise ``ValueError`` whose message states what is
  expected, never a shape error from deep inside torch.

Everything is tiny (a few channels, a few patches, one or two layers) so that an example takes at most a fraction of
a second on a CPU; the examples are derandomized and no example database is kept, so every run tries the same cases.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple, Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.networks.nets import UNETR, SwinUNETR

from lmttm_monai.networks.blocks import (
    PROCESS_UNITS,
    ConvLSTMCell,
    ConvLSTMState,
    LinkedMemory,
    LSTMSAAttention,
    MemoryResample,
    ProcessUnit,
    SALSTMAttention,
    SelfAttentionLSTM,
    TokenLearner,
    TokenMemory,
)
from lmttm_monai.networks.nets import (
    LMTTM,
    TTM,
    MemorySwinTransformer,
    MemorySwinUNETR,
    MemoryUNETR,
    MemoryViT,
    SALSTMUNet,
    to_memory_attention,
)


def properties(max_examples: int) -> settings:
    # derandomize: the same examples on every machine and run, so a CI failure reproduces locally;
    # database=None: no .hypothesis folder; deadline=None: the first forward of a network pays one-off costs
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


batch_sizes = st.integers(1, 3)
channel_counts = st.integers(1, 3)
class_counts = st.integers(1, 4)
spatial_dims_2_or_3 = st.sampled_from([2, 3])
unsupported_spatial_dims = st.sampled_from([0, 1, 4])
non_positive = st.integers(-2, 0)


class Invalid(NamedTuple):
    """One invalid case: constructor arguments, the input shape (``None``: the constructor itself must refuse the
    arguments) and a regular expression the ``ValueError`` message must contain."""

    kwargs: dict[str, Any]
    shape: Optional[tuple[int, ...]]
    message: str


def evaluate(net: torch.nn.Module, *inputs: torch.Tensor) -> Any:
    net.eval()
    with torch.no_grad():
        return net(*inputs)


def assert_finite(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        assert torch.isfinite(tensor).all()


def assert_refused(build: Callable[..., torch.nn.Module], case: Invalid) -> None:
    if case.shape is None:
        with pytest.raises(ValueError, match=case.message):
            build(**case.kwargs)
        return
    net = build(**case.kwargs).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=case.message):
        net(torch.rand(case.shape))


def sizes_text(sizes) -> str:
    return ", ".join(str(s) for s in sizes)


def axes(spatial_dims: int) -> str:
    return "H, W" if spatial_dims == 2 else "H, W, D"


def other_rank(draw, spatial_dims: int, batch: int, channels: int, size: int) -> tuple[int, ...]:
    """An input of the wrong rank: one spatial axis too few or too many."""
    spatial = draw(st.sampled_from([spatial_dims - 1, spatial_dims + 1]))
    return (batch, channels, *[size] * spatial)


def other_channels(draw, channels: int) -> int:
    return draw(st.sampled_from([c for c in range(1, 5) if c != channels]))


# ------------------------------------------------------------------------------------------ LMTTM and TTM

TTM_WIDTHS = dict(dim=16, memory_tokens=8, num_heads=2, mlp_ratio=1.0, dropout=0.0)


@st.composite
def ttm_configs(draw) -> tuple[type, dict[str, Any]]:
    spatial_dims = draw(spatial_dims_2_or_3)
    patch = draw(st.integers(2, 3))
    # a few patches per axis, plus a remainder smaller than a patch, which the tokenizer crops
    img_size = tuple(patch * draw(st.integers(1, 3)) + draw(st.integers(0, patch - 1)) for _ in range(spatial_dims))
    cls = draw(st.sampled_from([LMTTM, TTM]))
    kwargs = dict(
        spatial_dims=spatial_dims,
        in_channels=draw(channel_counts),
        out_channels=draw(class_counts),
        img_size=img_size,
        patch_size=patch,
        read_tokens=draw(st.integers(1, 3)),
        process_unit=draw(st.sampled_from(PROCESS_UNITS)),
        memory_init=draw(st.sampled_from(["learned", "zeros"])),
        **TTM_WIDTHS,
    )
    if cls is LMTTM:
        kwargs["memory_units"] = draw(st.sampled_from([1, 2, 4]))  # divisors of memory_tokens
    return cls, kwargs


@properties(20)
@given(config=ttm_configs(), batch=batch_sizes)
def test_token_turing_machines_valid_shapes_give_finite_logits_and_weights_of_the_documented_shape(config, batch):
    cls, kwargs = config
    torch.manual_seed(0)
    net = cls(**kwargs).eval()
    img_size, patch = kwargs["img_size"], kwargs["patch_size"]
    x = torch.rand(batch, kwargs["in_channels"], *img_size)
    with torch.no_grad():
        logits = net(x)
        same_logits, read_weights, write_weights = net.forward_with_weights(x)
    steps = img_size[0] // patch
    tokens = math.prod(s // patch for s in img_size[1:])
    m, r = kwargs["memory_tokens"], kwargs["read_tokens"]
    if cls is LMTTM:  # three units j - 1, j, j + 1 of m / k tokens are read; unit j + 1 is rewritten
        unit = m // kwargs["memory_units"]
        read_shape = (batch, steps, 3, r, unit + tokens)
        write_shape = (batch, steps, unit, 3 * unit + tokens + 3 * r)
    else:  # the whole memory is read and rewritten
        read_shape = (batch, steps, 1, r, m + tokens)
        write_shape = (batch, steps, m, m + tokens + r)
    assert logits.shape == (batch, kwargs["out_channels"])
    assert read_weights.shape == read_shape and write_weights.shape == write_shape
    assert_finite(logits, read_weights, write_weights)
    torch.testing.assert_close(same_logits, logits)


TTM_DEFECTS = ["rank", "channels", "size", "spatial_dims", "in_channels", "out_channels", "dim", "memory_tokens"]
TTM_DEFECTS += ["read_tokens", "patch_size", "img_size", "num_heads", "mlp_ratio", "dropout", "memory_units"]


@st.composite
def invalid_ttm_cases(draw, defect: str) -> tuple[type, Invalid]:
    cls, kwargs = draw(ttm_configs())
    if defect == "memory_units" and cls is TTM:  # TTM has no memory units: the defect is LMTTM's
        cls, kwargs["memory_units"] = LMTTM, 1
    spatial_dims, channels, img_size = kwargs["spatial_dims"], kwargs["in_channels"], kwargs["img_size"]
    batch = draw(batch_sizes)
    expected_input = re.escape(f"[B, {channels}, {sizes_text(img_size)}]")
    if defect == "rank":
        shape = other_rank(draw, spatial_dims, batch, channels, img_size[0])
        return cls, Invalid(kwargs, shape, rf"expected an input of shape {expected_input}, got a tensor of rank")
    if defect == "channels":
        other = other_channels(draw, channels)
        return cls, Invalid(kwargs, (batch, other, *img_size), rf"expected {channels} input channel\(s\), got {other}")
    if defect == "size":
        axis = draw(st.integers(0, spatial_dims - 1))
        sizes = list(img_size)
        sizes[axis] += draw(st.integers(1, 3))
        expected = re.escape(str(list(img_size)))
        return cls, Invalid(kwargs, (batch, channels, *sizes), rf"expected spatial size {expected}, got")
    if defect == "spatial_dims":
        kwargs["spatial_dims"] = draw(unsupported_spatial_dims)
        return cls, Invalid(kwargs, None, "spatial_dims must be 2 or 3")
    if defect == "img_size":
        kwargs["img_size"] = kwargs["patch_size"] - 1
        return cls, Invalid(kwargs, None, "is smaller than one patch")
    if defect == "num_heads":
        kwargs["num_heads"] = draw(st.sampled_from([3, 5, 6, 7]))  # none divides dim 16
        kwargs["process_unit"] = "transformer"
        return cls, Invalid(kwargs, None, r"dim \(16\) must be divisible by num_heads")
    if defect == "mlp_ratio":
        kwargs["mlp_ratio"] = draw(st.sampled_from([0.0, -1.0]))
        return cls, Invalid(kwargs, None, "mlp_ratio must be positive")
    if defect == "dropout":
        kwargs["dropout"] = draw(st.sampled_from([-0.1, 1.5]))
        return cls, Invalid(kwargs, None, r"dropout must be in \[0, 1\]")
    if defect == "memory_units":
        kwargs["memory_units"] = draw(st.sampled_from([-1, 0, 3, 5, 7]))  # not a positive divisor of 8
        return cls, Invalid(kwargs, None, "memory_units must be a positive")
    kwargs[defect] = draw(non_positive)
    message = {"patch_size": "patch_size must be positive"}.get(defect, f"{defect} .*must be a positive integer")
    return cls, Invalid(kwargs, None, message)


@pytest.mark.parametrize("defect", TTM_DEFECTS)
@properties(4)
@given(data=st.data())
def test_token_turing_machines_refuse_invalid_shapes_and_arguments_with_a_value_error_saying_what_is_expected(
    defect, data
):
    cls, invalid = data.draw(invalid_ttm_cases(defect))
    assert_refused(cls, invalid)


# ------------------------------------------------------------------------------------------ MemoryUNETR

UNETR_WIDTHS = dict(feature_size=4, hidden_size=24, mlp_dim=24, num_heads=2)


@st.composite
def unetr_configs(draw) -> dict[str, Any]:
    spatial_dims = draw(spatial_dims_2_or_3)
    most = 3 if spatial_dims == 2 else 2  # patches per axis: 3D inputs stay at most 32 voxels a side
    return dict(
        in_channels=draw(channel_counts),
        out_channels=draw(class_counts),
        img_size=tuple(16 * draw(st.integers(1, most)) for _ in range(spatial_dims)),
        spatial_dims=spatial_dims,
        transmission=draw(st.sampled_from(["sts", "none"])),
        converted=draw(st.booleans()),
    )


def build_memory_unetr(converted: bool = False, transmission: str = "sts", **kwargs) -> torch.nn.Module:
    """A MemoryUNETR, or a MONAI UNETR converted by ``to_memory_attention``: both must behave the same."""
    torch.manual_seed(0)
    if converted:
        return to_memory_attention(UNETR(**kwargs, **UNETR_WIDTHS), transmission=transmission)
    return MemoryUNETR(**kwargs, **UNETR_WIDTHS, transmission=transmission)


@properties(10)
@given(config=unetr_configs(), batch=batch_sizes)
def test_memory_unetr_valid_shapes_give_finite_outputs_of_the_documented_shape(config, batch):
    net = build_memory_unetr(**config)
    assert isinstance(net, MemoryUNETR) and net.transmission == config["transmission"]
    out = evaluate(net, torch.rand(batch, config["in_channels"], *config["img_size"]))
    assert out.shape == (batch, config["out_channels"], *config["img_size"])
    assert_finite(out)


UNETR_DEFECTS = ["rank", "channels", "size", "img_size", "spatial_dims", "transmission", "sizes"]


@st.composite
def invalid_unetr_cases(draw, defect: str) -> Invalid:
    kwargs = draw(unetr_configs())
    spatial_dims, channels, img_size = kwargs["spatial_dims"], kwargs["in_channels"], kwargs["img_size"]
    batch = draw(batch_sizes)
    expected_input = re.escape(f"MemoryUNETR expects input of shape [B, {channels}, {sizes_text(img_size)}]")
    if defect == "rank":
        return Invalid(kwargs, other_rank(draw, spatial_dims, batch, channels, 16), expected_input)
    if defect == "channels":
        return Invalid(kwargs, (batch, other_channels(draw, channels), *img_size), expected_input)
    if defect == "size":  # another multiple of 16, or not a multiple at all: only img_size fits
        sizes = list(img_size)
        sizes[draw(st.integers(0, spatial_dims - 1))] += draw(st.sampled_from([16, 1, 7, -1]))
        return Invalid(kwargs, (batch, channels, *sizes), expected_input)
    if defect == "img_size":
        kwargs["img_size"] = 16 * draw(st.integers(0, 2)) + draw(st.integers(1, 15))
        return Invalid(kwargs, None, "img_size must be a positive multiple of 16")
    if defect == "spatial_dims":
        kwargs["spatial_dims"] = draw(unsupported_spatial_dims)
        return Invalid(kwargs, None, "spatial_dims must be 2 or 3")
    if defect == "transmission":
        kwargs["transmission"] = draw(st.sampled_from(["ists", "hierarchical"]))
        return Invalid(kwargs, None, "transmission must be one of")
    name = draw(st.sampled_from(["in_channels", "out_channels"]))
    kwargs[name] = draw(non_positive)
    return Invalid(kwargs, None, f"{name} must be a positive integer")


@pytest.mark.parametrize("defect", UNETR_DEFECTS)
@properties(4)
@given(data=st.data())
def test_memory_unetr_refuses_invalid_shapes_and_arguments_with_a_value_error_saying_what_is_expected(defect, data):
    case = data.draw(invalid_unetr_cases(defect))
    if case.shape is None:  # constructor arguments are the memory network's checks; MONAI's UNETR takes most of them
        case.kwargs["converted"] = False
    assert_refused(build_memory_unetr, case)


# ------------------------------------------------------------------------------------------ MemoryViT

VIT_WIDTHS = dict(hidden_size=24, mlp_dim=24, num_heads=2)


@st.composite
def vit_configs(draw) -> dict[str, Any]:
    spatial_dims = draw(spatial_dims_2_or_3)
    patch = draw(st.sampled_from([4, 8]))
    grid = tuple(draw(st.integers(1, 2)) for _ in range(spatial_dims))
    return dict(
        in_channels=draw(channel_counts),
        img_size=tuple(g * patch for g in grid),
        patch_size=patch,
        num_layers=draw(st.integers(1, 2)),
        classification=draw(st.booleans()),
        num_classes=draw(class_counts),
        spatial_dims=spatial_dims,
        transmission=draw(st.sampled_from(["sts", "none"])),
    )


def build_memory_vit(**kwargs) -> MemoryViT:
    torch.manual_seed(0)
    return MemoryViT(**kwargs, **VIT_WIDTHS)


@properties(20)
@given(config=vit_configs(), batch=batch_sizes, data=st.data())
def test_memory_vit_valid_shapes_give_finite_outputs_of_the_documented_shape(config, batch, data):
    patch = config["patch_size"]
    # any size with the patch grid of img_size is accepted: the strided patch embedding crops the remainder
    sizes = [s + data.draw(st.integers(0, patch - 1)) for s in config["img_size"]]
    x, hidden_states = evaluate(build_memory_vit(**config), torch.rand(batch, config["in_channels"], *sizes))
    patches = math.prod(s // patch for s in config["img_size"])
    tokens = patches + 1 if config["classification"] else patches  # the class token comes first
    if config["classification"]:
        assert x.shape == (batch, config["num_classes"])
    else:
        assert x.shape == (batch, patches, VIT_WIDTHS["hidden_size"])
    assert len(hidden_states) == config["num_layers"]
    for hidden in hidden_states:
        assert hidden.shape == (batch, tokens, VIT_WIDTHS["hidden_size"])
    assert_finite(x, *hidden_states)


VIT_DEFECTS = ["rank", "channels", "grid", "img_size", "spatial_dims", "sizes"]


@st.composite
def invalid_vit_cases(draw, defect: str) -> Invalid:
    kwargs = draw(vit_configs())
    spatial_dims, channels, img_size = kwargs["spatial_dims"], kwargs["in_channels"], kwargs["img_size"]
    batch = draw(batch_sizes)
    expected_input = re.escape(f"MemoryViT expects input of shape [B, {channels}, {axes(spatial_dims)}] with ")
    if defect == "rank":
        return Invalid(kwargs, other_rank(draw, spatial_dims, batch, channels, 16), expected_input)
    if defect == "channels":
        return Invalid(kwargs, (batch, other_channels(draw, channels), *img_size), expected_input)
    if defect == "grid":  # one patch more, or fewer, along an axis
        sizes = list(img_size)
        axis = draw(st.integers(0, spatial_dims - 1))
        sizes[axis] += kwargs["patch_size"] if sizes[axis] == kwargs["patch_size"] else -kwargs["patch_size"]
        return Invalid(kwargs, (batch, channels, *sizes), expected_input)
    if defect == "img_size":
        kwargs["img_size"] = kwargs["patch_size"] - 1
        return Invalid(kwargs, None, "must hold at least one patch")
    if defect == "spatial_dims":
        kwargs["spatial_dims"] = draw(unsupported_spatial_dims)
        return Invalid(kwargs, None, "spatial_dims must be 2 or 3")
    name = draw(st.sampled_from(["in_channels", "num_layers", "num_classes"]))
    if name == "num_classes":
        kwargs["classification"] = True
    kwargs[name] = draw(non_positive)
    return Invalid(kwargs, None, f"{name} must be a positive integer")


@pytest.mark.parametrize("defect", VIT_DEFECTS)
@properties(4)
@given(data=st.data())
def test_memory_vit_refuses_invalid_shapes_and_arguments_with_a_value_error_saying_what_is_expected(defect, data):
    assert_refused(build_memory_vit, data.draw(invalid_vit_cases(defect)))


# ------------------------------------------------------------------------------------------ MemorySwinUNETR

SWIN_WIDTHS = dict(feature_size=12, depths=(2, 2, 1, 1))


@st.composite
def swin_sizes(draw, spatial_dims: int) -> tuple[int, ...]:
    """Multiples of 32 (patch_size ** 5) with more than one position at the 1/32 bottleneck (instance norm):
    one axis of 64, the others 32."""
    sizes = [32] * spatial_dims
    sizes[draw(st.integers(0, spatial_dims - 1))] = 64
    return tuple(sizes)


@st.composite
def swin_configs(draw) -> dict[str, Any]:
    spatial_dims = draw(spatial_dims_2_or_3)
    return dict(
        in_channels=draw(channel_counts),
        out_channels=draw(class_counts),
        window_size=draw(st.sampled_from([2, 4])),
        spatial_dims=spatial_dims,
        transmission=draw(st.sampled_from(["ists", "sts", "none"])),
        converted=draw(st.booleans()),
        sizes=draw(swin_sizes(spatial_dims)),
    )


def build_memory_swin_unetr(converted: bool = False, transmission: str = "ists", sizes=None, **kwargs):
    """A MemorySwinUNETR, or a MONAI SwinUNETR converted by ``to_memory_attention`` (``sizes``: the input's)."""
    torch.manual_seed(0)
    kwargs = {**SWIN_WIDTHS, **kwargs}  # an invalid feature_size replaces the small one
    if converted:
        return to_memory_attention(SwinUNETR(**kwargs), transmission=transmission)
    return MemorySwinUNETR(**kwargs, transmission=transmission)


@properties(8)
@given(config=swin_configs(), batch=batch_sizes)
def test_memory_swin_unetr_valid_shapes_give_finite_outputs_of_the_documented_shape(config, batch):
    net = build_memory_swin_unetr(**config)
    assert isinstance(net, MemorySwinUNETR) and net.transmission == config["transmission"]
    out = evaluate(net, torch.rand(batch, config["in_channels"], *config["sizes"]))
    assert out.shape == (batch, config["out_channels"], *config["sizes"])
    assert_finite(out)


SWIN_DEFECTS = ["rank", "channels", "multiple", "bottleneck", "spatial_dims", "sizes", "feature_size"]
SWIN_DEFECTS += ["window_size", "transmission"]


@st.composite
def invalid_swin_cases(draw, defect: str) -> Invalid:
    kwargs = draw(swin_configs())
    spatial_dims, channels, sizes = kwargs["spatial_dims"], kwargs["in_channels"], kwargs["sizes"]
    batch = draw(batch_sizes)
    names = axes(spatial_dims)
    expected = f"MemorySwinUNETR expects input of shape [B, {channels}, {names}] with {names} multiples of 32"
    expected_input = re.escape(expected)
    if defect == "rank":
        return Invalid(kwargs, other_rank(draw, spatial_dims, batch, channels, 32), expected_input)
    if defect == "channels":
        return Invalid(kwargs, (batch, other_channels(draw, channels), *sizes), expected_input)
    if defect == "multiple":
        bad = list(sizes)
        bad[draw(st.integers(0, spatial_dims - 1))] += draw(st.sampled_from([-16, 1, 8, 31]))
        return Invalid(kwargs, (batch, channels, *bad), expected_input)
    if defect == "bottleneck":  # 32 along every axis: a single position at 1/32, which instance norm cannot take
        return Invalid(kwargs, (batch, channels, *[32] * spatial_dims), "at least one spatial size of 64 or more")
    kwargs["converted"] = False  # the constructor's own checks
    if defect == "spatial_dims":
        kwargs["spatial_dims"] = draw(unsupported_spatial_dims)
        return Invalid(kwargs, None, "spatial_dims must be 2 or 3")
    if defect == "feature_size":
        kwargs["feature_size"] = draw(st.sampled_from([-12, 0, 8, 13]))
        return Invalid(kwargs, None, "feature_size (must be a positive integer|should be divisible by 12)")
    if defect == "window_size":
        kwargs["window_size"] = draw(non_positive)
        return Invalid(kwargs, None, "window_size must be positive")
    if defect == "transmission":
        kwargs["transmission"] = draw(st.sampled_from(["hierarchical", "memory"]))
        return Invalid(kwargs, None, "transmission must be one of")
    name = draw(st.sampled_from(["in_channels", "out_channels"]))
    kwargs[name] = draw(non_positive)
    return Invalid(kwargs, None, f"{name} must be a positive integer")


@pytest.mark.parametrize("defect", SWIN_DEFECTS)
@properties(3)
@given(data=st.data())
def test_memory_swin_unetr_refuses_invalid_shapes_and_arguments_with_a_value_error_saying_what_is_expected(
    defect, data
):
    assert_refused(build_memory_swin_unetr, data.draw(invalid_swin_cases(defect)))


@properties(10)
@given(
    spatial_dims=spatial_dims_2_or_3,
    batch=batch_sizes,
    channels=channel_counts,
    transmission=st.sampled_from(["ists", "sts", "none"]),
    data=st.data(),
)
def test_memory_swin_transformer_gives_five_finite_feature_maps_and_refuses_a_wrong_input(
    spatial_dims, batch, channels, transmission, data
):
    torch.manual_seed(0)
    net = MemorySwinTransformer(
        in_chans=channels, embed_dim=12, window_size=(4,) * spatial_dims, patch_size=(2,) * spatial_dims,
        depths=(2, 1, 1, 1), num_heads=(3, 3, 3, 3), spatial_dims=spatial_dims, transmission=transmission,
    ).eval()  # fmt: skip
    sizes = [32 * data.draw(st.integers(1, 2 if spatial_dims == 2 else 1)) for _ in range(spatial_dims)]
    outputs = evaluate(net, torch.rand(batch, channels, *sizes))
    # stage i (0 = the patch embedding): 12 * 2**i channels at 1 / 2**(i + 1) of the input size
    assert [tuple(o.shape) for o in outputs] == [
        (batch, 12 * 2**i, *[s // 2 ** (i + 1) for s in sizes]) for i in range(5)
    ]
    assert_finite(*outputs)
    wrong = data.draw(st.sampled_from(["channels", "rank"]))
    shape = (
        (batch, other_channels(data.draw, channels), *sizes)
        if wrong == "channels"
        else other_rank(data.draw, spatial_dims, batch, channels, 32)
    )
    expected = re.escape(f"MemorySwinTransformer expects input of shape [B, {channels}, {axes(spatial_dims)}]")
    with torch.no_grad(), pytest.raises(ValueError, match=expected):
        net(torch.rand(shape))


# ------------------------------------------------------------------------------------------ SALSTMUNet

SALSTM_WIDTHS = dict(features=(4, 4, 8, 8, 16, 4), hidden_channels=4)


@st.composite
def salstm_sizes(draw, spatial_dims: int) -> tuple[int, ...]:
    """Multiples of 16 (four poolings) with more than one position at the 1/16 bottleneck (instance norm)."""
    if spatial_dims == 2:
        sizes = [draw(st.sampled_from([16, 32, 48])) for _ in range(2)]
        if sizes == [16, 16]:
            sizes[draw(st.integers(0, 1))] = 32
        return tuple(sizes)
    sizes = [16, 16, 16]
    sizes[draw(st.integers(0, 2))] = 32  # 3D stays small: one axis of 32
    return tuple(sizes)


@st.composite
def salstm_configs(draw) -> dict[str, Any]:
    spatial_dims = draw(spatial_dims_2_or_3)
    return dict(
        spatial_dims=spatial_dims,
        in_channels=draw(channel_counts),
        out_channels=draw(class_counts),
        context=draw(st.sampled_from([1, 3, 5] if spatial_dims == 2 else [1, 3])),
        attention=(attention := draw(st.sampled_from(["salstm", "lstmsa", "none"]))),
        context_channels=attention == "none" and draw(st.booleans()),
        sizes=draw(salstm_sizes(spatial_dims)),
    )


def build_salstm(sizes=None, **kwargs) -> SALSTMUNet:
    torch.manual_seed(0)
    return SALSTMUNet(**{**SALSTM_WIDTHS, **kwargs})


@properties(12)
@given(config=salstm_configs(), batch=batch_sizes, sequence_layout=st.booleans())
def test_salstm_unet_valid_shapes_give_finite_outputs_of_the_documented_shape(config, batch, sequence_layout):
    t, c, sizes = config["context"], config["in_channels"], config["sizes"]
    # the two documented layouts: [B, T * C, *spatial] and [B, T, C, *spatial]
    shape = (batch, t, c, *sizes) if sequence_layout else (batch, t * c, *sizes)
    out = evaluate(build_salstm(**config), torch.rand(shape))
    assert out.shape == (batch, config["out_channels"], *sizes)
    assert_finite(out)


SALSTM_DEFECTS = ["rank", "channels", "sequence", "multiple", "bottleneck", "spatial_dims", "sizes", "context"]
SALSTM_DEFECTS += ["attention", "hidden_channels", "features", "kernel_size", "scale", "context_channels"]


@st.composite
def invalid_salstm_cases(draw, defect: str) -> Invalid:
    kwargs = draw(salstm_configs())
    if defect in ("kernel_size", "scale", "context_channels") and kwargs["attention"] == "none":  # LSTM-only
        kwargs["attention"] = draw(st.sampled_from(["salstm", "lstmsa"]))
        kwargs["context_channels"] = False
    spatial_dims, t, c, sizes = kwargs["spatial_dims"], kwargs["context"], kwargs["in_channels"], kwargs["sizes"]
    batch = draw(batch_sizes)
    if defect == "rank":  # neither [B, T * C, *spatial] nor [B, T, C, *spatial]
        spatial = draw(st.sampled_from([spatial_dims - 1, spatial_dims + 2]))
        message = f"expected \\[B, T \\* C, \\*spatial\\] or \\[B, T, C, \\*spatial\\] with {spatial_dims} spatial"
        return Invalid(kwargs, (batch, t * c, *[4] * spatial), message)
    if defect == "channels":
        other = t * c + draw(st.sampled_from([-1, 1, 2])) if t * c > 1 else draw(st.integers(2, 4))
        return Invalid(kwargs, (batch, other, *sizes), rf"expected {t * c} channels \(context {t} x in_channels {c}\)")
    if defect == "sequence":
        other_t, other_c = draw(st.sampled_from([(a, b) for a in range(1, 6) for b in range(1, 4) if (a, b) != (t, c)]))
        message = re.escape(f"expected [B, {t}, {c}, *spatial] (context, in_channels)")
        return Invalid(kwargs, (batch, other_t, other_c, *sizes), message)
    if defect == "multiple":
        bad = list(sizes)
        bad[draw(st.integers(0, spatial_dims - 1))] += draw(st.sampled_from([-8, 1, 7, 15]))
        return Invalid(kwargs, (batch, t * c, *bad), "every spatial size to be a positive multiple of 16")
    if defect == "bottleneck":  # 16 along every axis: one position at 1/16, which instance norm cannot take
        return Invalid(kwargs, (batch, t * c, *[16] * spatial_dims), "at least one spatial size of 32 or more")
    if defect == "spatial_dims":
        kwargs["spatial_dims"] = draw(unsupported_spatial_dims)
        return Invalid(kwargs, None, "spatial_dims must be 2 or 3")
    if defect == "context":
        kwargs["context"] = draw(st.sampled_from([-1, 0, 2, 4]))
        return Invalid(kwargs, None, "context must be a positive odd number")
    if defect == "attention":
        kwargs["attention"] = draw(st.sampled_from(["transformer", "mam"]))
        return Invalid(kwargs, None, "attention must be one of")
    if defect == "hidden_channels":
        kwargs["hidden_channels"] = draw(non_positive)
        return Invalid(kwargs, None, "hidden_channels must be positive")
    if defect == "features":
        features = list(SALSTM_WIDTHS["features"])
        features[draw(st.integers(0, 5))] = draw(non_positive)
        kwargs["features"] = tuple(features)
        return Invalid(kwargs, None, "features must be six positive sizes")
    if defect == "kernel_size":
        kwargs["kernel_size"] = draw(st.sampled_from([-1, 0, 2, 4]))
        return Invalid(kwargs, None, "kernel_size must be a positive odd number")
    if defect == "scale":
        kwargs["scale"] = draw(st.sampled_from([-1.0, 0.0]))
        return Invalid(kwargs, None, "scale must be a positive number")
    if defect == "context_channels":  # the plain U-shaped net's option, refused with the LSTMs
        kwargs["context_channels"] = True
        return Invalid(kwargs, None, "context_channels=True needs attention='none'")
    kwargs[draw(st.sampled_from(["in_channels", "out_channels"]))] = draw(non_positive)
    return Invalid(kwargs, None, "in_channels and out_channels must be positive")


@pytest.mark.parametrize("defect", SALSTM_DEFECTS)
@properties(4)
@given(data=st.data())
def test_salstm_unet_refuses_invalid_shapes_and_arguments_with_a_value_error_saying_what_is_expected(defect, data):
    assert_refused(build_salstm, data.draw(invalid_salstm_cases(defect)))


# ------------------------------------------------------------------------------------------ blocks


@st.composite
def small_spatial(draw, spatial_dims: int, largest: int = 6) -> tuple[int, ...]:
    return tuple(draw(st.integers(1, largest)) for _ in range(spatial_dims))


@properties(25)
@given(
    spatial_dims=spatial_dims_2_or_3,
    batch=batch_sizes,
    in_channels=channel_counts,
    hidden=st.integers(1, 4),
    kernel_size=st.sampled_from([1, 3]),
    with_state=st.booleans(),
    data=st.data(),
)
def test_conv_lstm_cell_gives_finite_gates_and_states_of_the_input_size_and_refuses_wrong_shapes(
    spatial_dims, batch, in_channels, hidden, kernel_size, with_state, data
):
    torch.manual_seed(0)
    cell = ConvLSTMCell(spatial_dims, in_channels, hidden, kernel_size).eval()
    spatial = data.draw(small_spatial(spatial_dims))
    x = torch.rand(batch, in_channels, *spatial)
    state = (torch.rand(batch, hidden, *spatial), torch.rand(batch, hidden, *spatial)) if with_state else None
    out = evaluate(cell, x, state)
    for field in out:
        assert field.shape == (batch, hidden, *spatial)
    assert_finite(*out)
    assert all(((g >= 0) & (g <= 1)).all() for g in (out.i, out.f, out.o)) and (out.g.abs() <= 1).all()

    wrong = data.draw(st.sampled_from(["channels", "rank", "state"]))
    if wrong == "state":
        bad_state = (torch.rand(batch, hidden + 1, *spatial), torch.rand(batch, hidden, *spatial))
        with pytest.raises(ValueError, match=re.escape(f"expects a state (h, c) of shape {[batch, hidden, *spatial]}")):
            cell(x, bad_state)
        return
    shape = (
        (batch, other_channels(data.draw, in_channels), *spatial)
        if wrong == "channels"
        else other_rank(data.draw, spatial_dims, batch, in_channels, 4)
    )
    with pytest.raises(ValueError, match=re.escape(f"ConvLSTMCell expects x of shape [B, {in_channels}, *spatial]")):
        cell(torch.rand(shape))


@properties(20)
@given(
    spatial_dims=spatial_dims_2_or_3,
    batch=batch_sizes,
    in_channels=channel_counts,
    hidden=st.integers(1, 4),
    steps=st.integers(1, 3),
    attention=st.sampled_from(["salstm", "lstmsa"]),
    data=st.data(),
)
def test_self_attention_lstm_gives_a_finite_map_of_hidden_channels_and_refuses_wrong_sequences(
    spatial_dims, batch, in_channels, hidden, steps, attention, data
):
    torch.manual_seed(0)
    block = SelfAttentionLSTM(spatial_dims, in_channels, hidden, 3, attention).eval()
    spatial = data.draw(small_spatial(spatial_dims))
    out = evaluate(block, torch.rand(batch, steps, in_channels, *spatial))
    assert out.shape == (batch, hidden, *spatial)
    assert_finite(out)

    wrong = data.draw(st.sampled_from(["channels", "rank", "empty"]))
    if wrong == "channels":
        shape = (batch, steps, other_channels(data.draw, in_channels), *spatial)
    elif wrong == "empty":
        shape = (batch, 0, in_channels, *spatial)
    else:
        shape = (batch, steps, in_channels, *spatial, 2)
    expected = re.escape(f"SelfAttentionLSTM expects a sequence of shape [B, T, {in_channels}, *spatial] with T >= 1")
    with pytest.raises(ValueError, match=expected):
        block(torch.rand(shape))


@properties(20)
@given(
    spatial_dims=spatial_dims_2_or_3,
    batch=batch_sizes,
    channels=st.integers(1, 5),
    scale=st.sampled_from([None, 0.5]),
    data=st.data(),
)
def test_salstm_and_lstmsa_attention_keep_the_shape_of_the_lstm_states_and_stay_finite(
    spatial_dims, batch, channels, scale, data
):
    torch.manual_seed(0)
    spatial = data.draw(small_spatial(spatial_dims))
    states = ConvLSTMState(*(torch.rand(batch, channels, *spatial) for _ in range(6)))
    for attention in (SALSTMAttention(scale), LSTMSAAttention(spatial_dims, channels, scale)):
        out = evaluate(attention, states)
        assert out.shape == (batch, channels, *spatial)
        assert_finite(out)


@properties(25)
@given(
    batch=batch_sizes,
    tokens=st.integers(1, 10),
    dim=st.integers(1, 16),
    summaries=st.integers(1, 5),
    feature_projection=st.booleans(),
    wrong=st.sampled_from(["dim", "rank", "empty"]),
)
def test_token_learner_gives_finite_tokens_and_distributions_and_refuses_wrong_token_shapes(
    batch, tokens, dim, summaries, feature_projection, wrong
):
    torch.manual_seed(0)
    learner = TokenLearner(dim, summaries, feature_projection=feature_projection).eval()
    out, weights = evaluate(learner, torch.rand(batch, tokens, dim))
    assert out.shape == (batch, summaries, dim) and weights.shape == (batch, summaries, tokens)
    assert_finite(out, weights)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch, summaries))
    shape = {"dim": (batch, tokens, dim + 1), "rank": (batch, dim), "empty": (batch, 0, dim)}[wrong]
    with pytest.raises(ValueError, match=re.escape(f"TokenLearner expects tokens of shape [B, N, {dim}] with N >= 1")):
        learner(torch.rand(shape))
    with pytest.raises(ValueError, match="must be positive"):
        TokenLearner(0 if wrong == "dim" else dim, 0 if wrong != "dim" else summaries)


@properties(25)
@given(
    kind=st.sampled_from(PROCESS_UNITS),
    batch=batch_sizes,
    tokens=st.integers(1, 6),
    heads=st.sampled_from([1, 2, 4]),
    layers=st.integers(1, 2),
    wrong=st.sampled_from(["dim", "rank", "tokens"]),
)
def test_process_unit_keeps_the_token_shape_finite_and_refuses_wrong_token_shapes(
    kind, batch, tokens, heads, layers, wrong
):
    dim = 8
    torch.manual_seed(0)
    unit = ProcessUnit(kind, dim, tokens, layers, heads, mlp_ratio=2.0).eval()
    out = evaluate(unit, torch.rand(batch, tokens, dim))
    assert out.shape == (batch, tokens, dim)
    assert_finite(out)
    if wrong == "tokens" and kind != "mixer":  # only the mixer's token MLP fixes the number of tokens
        assert evaluate(unit, torch.rand(batch, tokens + 1, dim)).shape == (batch, tokens + 1, dim)
        return
    shape = {"dim": (batch, tokens, dim + 1), "rank": (tokens, dim), "tokens": (batch, tokens + 1, dim)}[wrong]
    expected = f"ProcessUnit expects tokens of shape [B, {tokens if kind == 'mixer' else 'N'}, {dim}]"
    with pytest.raises(ValueError, match=re.escape(expected)):
        unit(torch.rand(shape))


@properties(25)
@given(
    linked=st.booleans(),
    batch=batch_sizes,
    units=st.sampled_from([1, 2, 3, 6]),
    inputs=st.integers(1, 5),
    read=st.integers(1, 3),
    step=st.integers(0, 7),
)
def test_token_memories_read_and_write_finite_tokens_of_the_documented_shapes(linked, batch, units, inputs, read, step):
    dim, m = 8, 6
    torch.manual_seed(0)
    memory_block = LinkedMemory(dim, m, units, inputs, read) if linked else TokenMemory(dim, m, inputs, read)
    memory_block.eval()
    memory = memory_block.initial_memory(batch)
    x = torch.rand(batch, inputs, dim)
    with torch.no_grad():
        tokens, read_weights = memory_block.read(memory, x, step)
        outputs = torch.rand_like(tokens)
        new_memory, write_weights = memory_block.write(memory, x, outputs, step)
    if linked:  # units j - 1, j, j + 1 are read; unit j + 1 is rewritten
        unit = m // units
        assert memory.shape == new_memory.shape == (batch, units, unit, dim)
        assert tokens.shape == (batch, 3 * read, dim) and read_weights.shape == (batch, 3, read, unit + inputs)
        assert write_weights.shape == (batch, unit, 3 * unit + inputs + 3 * read)
    else:
        assert memory.shape == new_memory.shape == (batch, m, dim)
        assert tokens.shape == (batch, read, dim) and read_weights.shape == (batch, 1, read, m + inputs)
        assert write_weights.shape == (batch, m, m + inputs + read)
    assert_finite(tokens, read_weights, new_memory, write_weights)


@properties(20)
@given(spatial_dims=spatial_dims_2_or_3, batch=batch_sizes, channels=st.integers(1, 4), data=st.data())
def test_memory_resample_halves_the_grid_doubles_the_channels_and_refuses_wrong_memories(
    spatial_dims, batch, channels, data
):
    torch.manual_seed(0)
    resample = MemoryResample(spatial_dims, channels).eval()
    spatial = data.draw(small_spatial(spatial_dims, largest=7))  # odd sizes are padded first
    out = evaluate(resample, torch.rand(batch, *spatial, channels))
    assert out.shape == (batch, *[-(-s // 2) for s in spatial], 2 * channels)
    assert_finite(out)
    wrong = data.draw(st.sampled_from([(batch, *spatial, channels + 1), (batch, *spatial, 2, channels)]))
    expected = f"MemoryResample expects memory of shape [B, *spatial, {channels}]"
    with pytest.raises(ValueError, match=re.escape(expected)):
        resample(torch.rand(wrong))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        MemoryResample(data.draw(unsupported_spatial_dims), channels)
