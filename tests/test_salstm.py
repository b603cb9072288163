"""SALSTM / LSTMSA blocks, the SALSTMUNet, and the 2.5D slice sampling and whole-volume inference around them."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import BasicUNet
from monai.transforms import ResizeWithPadOrCrop

from lmttm_monai.inferers import AdjacentSliceInferer
from lmttm_monai.networks import NETWORKS, get_network
from lmttm_monai.networks.blocks import (
    ConvLSTMCell,
    ConvLSTMState,
    LSTMSAAttention,
    SALSTMAttention,
    SelfAttentionLSTM,
    channel_attention,
)
from lmttm_monai.networks.nets import SALSTMUNet
from lmttm_monai.transforms import RandAdjacentSlicesd, adjacent_slice_indices

FEATURES = (4, 4, 8, 8, 16, 4)
ATTENTIONS = ("salstm", "lstmsa", "none")


def small(attention: str = "salstm", spatial_dims: int = 2, context: int = 3, **kwargs) -> SALSTMUNet:
    torch.manual_seed(0)
    options = dict(features=FEATURES, hidden_channels=6, **kwargs)
    return SALSTMUNet(spatial_dims, 1, 3, context=context, attention=attention, **options)


def states(batch: int = 2, channels: int = 5, spatial=(6, 7)) -> ConvLSTMState:
    torch.manual_seed(1)
    return ConvLSTMState(*(torch.rand(batch, channels, *spatial) for _ in range(6)))


# ---------------------------------------------------------------- blocks


def test_conv_lstm_cell_follows_the_lstm_equations_from_a_zero_state():
    cell = ConvLSTMCell(2, in_channels=2, hidden_channels=3, kernel_size=3)
    x = torch.rand(2, 2, 8, 8)
    s = cell(x)
    zi, zf, zo, zg = torch.chunk(cell.gates(torch.cat([x, torch.zeros(2, 3, 8, 8)], 1)), 4, 1)
    torch.testing.assert_close(s.i, torch.sigmoid(zi))
    torch.testing.assert_close(s.f, torch.sigmoid(zf))
    torch.testing.assert_close(s.g, torch.tanh(zg))
    torch.testing.assert_close(s.c, torch.sigmoid(zi) * torch.tanh(zg))  # f * c_prev vanishes for c_prev = 0
    torch.testing.assert_close(s.h, torch.sigmoid(zo) * torch.tanh(s.c))
    second = cell(x, (s.h, s.c))
    torch.testing.assert_close(second.c, second.f * s.c + second.i * second.g)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_conv_lstm_cell_keeps_the_spatial_size_in_2d_and_3d(spatial_dims):
    cell = ConvLSTMCell(spatial_dims, 4, 5, kernel_size=5)
    s = cell(torch.rand(2, 4, *[9] * spatial_dims))
    assert all(t.shape == (2, 5, *[9] * spatial_dims) for t in s)


def test_salstm_attention_is_the_papers_formula_over_channels_with_scale_one_over_sqrt_positions():
    s = states()
    q, k, v = ((s.c + s.f) / 2).flatten(2), ((s.g + s.h) / 2).flatten(2), s.h.flatten(2)
    expected = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(6 * 7), dim=-1) @ v  # C x C attention
    attention = SALSTMAttention()
    torch.testing.assert_close(attention(s), expected.reshape(s.h.shape))
    assert not list(attention.parameters())  # the LSTM states are Q, K, V: nothing is learned
    rescaled = torch.softmax(q @ k.transpose(1, 2) * 0.5, dim=-1) @ v
    torch.testing.assert_close(SALSTMAttention(scale=0.5)(s), rescaled.reshape(s.h.shape))


def test_lstmsa_attention_gates_learned_per_position_projections_of_h():
    s = states()
    attention = LSTMSAAttention(2, channels=5)
    h = s.h
    q = attention.query(h) * (s.c + s.f) / 2
    k = attention.key(h) * (s.g + h) / 2
    v = attention.value(h) * h
    torch.testing.assert_close(attention(s), channel_attention(q, k, v))
    assert all(conv.kernel_size == (1, 1) for conv in (attention.query, attention.key, attention.value))
    # per position: a value at one pixel changes the projections at that pixel only
    h2 = h.clone()
    h2[..., 0, 0] += 1
    assert torch.equal(attention.query(h2)[..., 1:, :], attention.query(h)[..., 1:, :])


def test_channel_attention_scale_follows_the_input_size():
    torch.manual_seed(0)
    q, k, v = (torch.rand(1, 3, 16, 16) for _ in range(3))
    default = channel_attention(q, k, v)
    torch.testing.assert_close(default, channel_attention(q, k, v, scale=1 / 16))
    assert not torch.allclose(default, channel_attention(q, k, v, scale=1 / 88))


def test_self_attention_lstm_reads_the_states_of_the_last_step():
    torch.manual_seed(0)
    block = SelfAttentionLSTM(2, in_channels=3, hidden_channels=4, attention="salstm")
    x = torch.rand(2, 3, 3, 8, 8)
    s = block.cell(x[:, 0])
    for t in (1, 2):
        s = block.cell(x[:, t], (s.h, s.c))
    torch.testing.assert_close(block(x), SALSTMAttention()(s))
    assert not torch.allclose(block(x), block(x.flip(1)))


# ---------------------------------------------------------------- SALSTMUNet


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("spatial_dims,size", [(2, (32, 48)), (3, (16, 16, 32))])
def test_logits_are_the_middle_elements_classes_in_2d_and_3d(attention, spatial_dims, size):
    net = small(attention, spatial_dims).eval()
    stacked = torch.rand(2, 3, *size)  # [B, T * C, *spatial]
    with torch.no_grad():
        out = net(stacked)
        assert out.shape == (2, 3, *size)
        torch.testing.assert_close(net(stacked.unsqueeze(2)), out)  # the [B, T, C, *spatial] layout


@pytest.mark.parametrize("context", [1, 5])
def test_other_context_lengths_and_a_single_2d_image_as_a_sequence_of_one(context):
    net = SALSTMUNet(2, in_channels=3, out_channels=2, context=context, features=FEATURES, hidden_channels=4)
    assert net(torch.rand(2, 3 * context, 32, 32)).shape == (2, 2, 32, 32)


@pytest.mark.parametrize("attention", ["salstm", "lstmsa"])
def test_sequence_order_matters_forward_lstm_over_previous_and_reverse_over_next(attention):
    net = small(attention).eval()
    x = torch.rand(2, 3, 32, 32)
    swapped = x.flip(1)  # next, current, previous
    with torch.no_grad():
        out = net(x)
        assert not torch.allclose(out, net(swapped), atol=1e-4)
        # swapping the two LSTMs and the halves of the head undoes the swap of previous and next exactly
        mirror = small(attention).eval()
        mirror.forward_lstm.load_state_dict(net.reverse_lstm.state_dict())
        mirror.reverse_lstm.load_state_dict(net.forward_lstm.state_dict())
        weight = net.head.weight
        mirror.head.weight.copy_(torch.cat([weight[:, 6:], weight[:, :6]], dim=1))
        mirror.head.bias.copy_(net.head.bias)
        mirror.unet.load_state_dict(net.unet.state_dict())
        torch.testing.assert_close(mirror(swapped), out)


def test_none_is_exactly_the_plain_basic_unet_on_the_current_slice():
    net = small("none").eval()
    plain = BasicUNet(2, 1, 3, features=FEATURES).eval()
    plain.load_state_dict(net.unet.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x[:, 1:2]), rtol=0, atol=0)
        neighbours_changed = x.clone()
        neighbours_changed[:, [0, 2]] = torch.rand(2, 2, 32, 32)
        assert torch.equal(net(neighbours_changed), net(x))
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in plain.parameters())
    assert net.forward_lstm is None and net.reverse_lstm is None and net.head is None


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_context_channels_is_exactly_the_plain_basic_unet_on_all_the_slices_as_channels(spatial_dims):
    net = small("none", spatial_dims, context_channels=True).eval()
    plain = BasicUNet(spatial_dims, 3, 3, features=FEATURES).eval()
    plain.load_state_dict(net.unet.state_dict())
    spatial = (32, 32) if spatial_dims == 2 else (32, 16, 16)
    x = torch.rand(2, 3, *spatial)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)
        torch.testing.assert_close(net(x.unsqueeze(2)), plain(x), rtol=0, atol=0)  # the [B, T, C, *spatial] layout
        neighbours_changed = x.clone()
        neighbours_changed[:, [0, 2]] = torch.rand(2, 2, *spatial)
        assert not torch.allclose(net(neighbours_changed), net(x))  # unlike "none" alone, the neighbours count
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))
    assert net.forward_lstm is None and net.reverse_lstm is None and net.head is None


def test_context_channels_needs_the_plain_unet():
    for attention in ("salstm", "lstmsa"):
        with pytest.raises(ValueError, match="context_channels=True needs attention='none'"):
            small(attention, context_channels=True)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_samples_in_a_batch_do_not_interact(attention):
    net = small(attention).train()  # train mode too: instance norm is per sample
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    out = net(x)
    alone = torch.cat([net(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=1e-5)
    out[0].sum().backward()
    assert x.grad[1:].abs().max() == 0 and x.grad[0].abs().max() > 0


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_torchscript_gives_the_eager_logits(attention):
    net = small(attention).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_registry_builds_the_net_and_invalid_arguments_raise_clear_errors():
    assert "salstm_unet" in NETWORKS.names
    net = get_network(
        "salstm_unet", spatial_dims=2, in_channels=1, out_channels=3, attention="lstmsa", features=FEATURES
    )
    assert isinstance(net, SALSTMUNet) and isinstance(net.forward_lstm.attention, LSTMSAAttention)
    with pytest.raises(ValueError, match="context must be a positive odd"):
        SALSTMUNet(2, 1, 3, context=2)
    with pytest.raises(ValueError, match="attention must be one of"):
        SALSTMUNet(2, 1, 3, attention="transformer")
    with pytest.raises(ValueError, match="spatial_dims"):
        SALSTMUNet(1, 1, 3)
    with pytest.raises(ValueError, match="scale"):
        SALSTMUNet(2, 1, 3, scale=0.0)
    with pytest.raises(ValueError, match="expected 3 channels"):
        small()(torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match="spatial dimensions"):
        small()(torch.rand(1, 3, 32))


# ---------------------------------------------------------------- 2.5D sampling and whole-volume inference


def test_adjacent_slices_repeat_the_edge_slices():
    assert adjacent_slice_indices(4, 3).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert adjacent_slice_indices(1, 5).tolist() == [[0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="odd"):
        adjacent_slice_indices(4, 2)


def test_training_samples_stack_the_neighbours_and_take_the_label_of_the_current_slice():
    volume = torch.arange(5.0)[None, None, :, None].expand(1, 4, 5, 6).clone()  # value = index along axis 1
    label = torch.zeros(1, 4, 5, 6)
    label[0, :, 3] = 2
    sampler = RandAdjacentSlicesd(context=3, axis=1, num_samples=20, pos_fraction=1.0)
    sampler.set_random_state(0)
    samples = sampler({"image": volume, "label": label})
    assert len(samples) == 20
    for sample in samples:
        assert sample["slice_index"] == 3  # the only foreground slice
        assert sample["image"].shape == (3, 4, 6) and sample["label"].shape == (1, 4, 6)
        assert sample["image"][:, 0, 0].tolist() == [2.0, 3.0, 4.0]
        assert (sample["label"] == 2).all()
    sampler = RandAdjacentSlicesd(context=3, axis=1, num_samples=50, pos_fraction=0.0)
    sampler.set_random_state(0)
    indices = {s["slice_index"] for s in sampler({"image": volume, "label": label})}
    assert indices == set(range(5))
    edge = next(s for s in sampler({"image": volume, "label": label}) if s["slice_index"] == 0)
    assert edge["image"][:, 0, 0].tolist() == [0.0, 0.0, 1.0]


def test_inference_reassembles_the_volume_on_its_own_grid_with_the_same_neighbours():
    torch.manual_seed(0)
    volume = torch.rand(2, 1, 7, 35, 50)
    for axis in (0, 1, 2):
        inferer = AdjacentSliceInferer(axis=axis, context=3, slice_batch_size=5)
        torch.testing.assert_close(inferer(volume, lambda x: x[:, 1:2]), volume, rtol=0, atol=0)
        previous = inferer(volume, lambda x: x[:, 0:1])
        index = adjacent_slice_indices(volume.shape[axis + 2], 3)[:, 0]
        torch.testing.assert_close(previous, volume.index_select(axis + 2, index), rtol=0, atol=0)
    meta = MetaTensor(volume, affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])))
    out = AdjacentSliceInferer()(meta, lambda x: x[:, 1:2].repeat(1, 3, 1, 1))
    assert isinstance(out, MetaTensor) and out.shape == (2, 3, 7, 35, 50)
    torch.testing.assert_close(out.affine, meta.affine)


def test_inference_feeds_the_network_exactly_what_training_gives_it():
    torch.manual_seed(2)
    volume, label = torch.rand(1, 9, 41, 37), torch.ones(1, 9, 41, 37)
    seen = []

    def recording_network(x):
        seen.append(x)
        return x[:, 1:2]

    AdjacentSliceInferer(axis=0, context=3, spatial_size=64, slice_batch_size=4)(volume[None], recording_network)
    given = torch.cat(seen)  # [9, 3, 64, 64]: slice s with its neighbours, padded
    assert given.shape == (9, 3, 64, 64)
    sampler = RandAdjacentSlicesd(context=3, axis=0, num_samples=4)
    for sample in sampler({"image": volume, "label": label}):
        padded = ResizeWithPadOrCrop((64, 64))(sample["image"])  # the bundle's training padding
        torch.testing.assert_close(given[sample["slice_index"]], torch.as_tensor(padded), rtol=0, atol=0)
