"""Memory-Attention (MAM) in MONAI's UNETR and SwinUNETR: equivalence, weight loading, and the memory chain."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR

from lmttm_monai.networks import get_network
from lmttm_monai.networks.blocks import MemoryBasicLayer
from lmttm_monai.networks.nets import (
    MemorySwinUNETR,
    MemoryUNETR,
    MemoryViT,
    load_self_attention_weights,
    to_memory_attention,
)

UNETR_ARGS = {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
SWIN_ARGS = {"feature_size": 12, "window_size": 4}
# SwinUNETR needs sizes divisible by 32; a non-cubic 3D input exercises padding and window-size clipping
SIZES = {("unetr", 2): (64, 64), ("unetr", 3): (32, 32, 32), ("swin", 2): (64, 64), ("swin", 3): (64, 32, 32)}


def build(kind: str, spatial_dims: int, memory: bool, **kwargs):
    size = SIZES[(kind, spatial_dims)]
    if kind == "unetr":
        cls = MemoryUNETR if memory else UNETR
        return cls(in_channels=1, out_channels=3, img_size=size, spatial_dims=spatial_dims, **UNETR_ARGS, **kwargs)
    cls = MemorySwinUNETR if memory else SwinUNETR
    return cls(in_channels=1, out_channels=3, spatial_dims=spatial_dims, **SWIN_ARGS, **kwargs)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def outputs(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", ["unetr", "swin"])
def test_monai_weights_load_strictly_and_memory_off_is_exactly_monai(kind, spatial_dims):
    torch.manual_seed(0)
    monai_net = build(kind, spatial_dims, memory=False)
    x = torch.randn(2, 1, *SIZES[(kind, spatial_dims)])
    expected = outputs(monai_net, x)

    plain = build(kind, spatial_dims, memory=True, transmission="none")
    plain.load_state_dict(monai_net.state_dict(), strict=True)
    assert torch.equal(outputs(plain, x), expected)

    with_memory = build(kind, spatial_dims, memory=True)  # default: STS for UNETR, ISTS for SwinUNETR
    with_memory.load_state_dict(monai_net.state_dict(), strict=True)
    assert with_memory.transmission == ("sts" if kind == "unetr" else "ists")
    assert not torch.allclose(outputs(with_memory, x), expected, atol=1e-4)
    assert n_params(with_memory) == n_params(monai_net)  # Memory-Attention adds no parameter


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sts_on_swin_adds_only_the_memory_resampling_parameters(spatial_dims):
    torch.manual_seed(0)
    monai_net = build("swin", spatial_dims, memory=False)
    sts = build("swin", spatial_dims, memory=True, transmission="sts")
    extra = {k for k in sts.state_dict() if k not in monai_net.state_dict()}
    assert extra and all(k.startswith("swinViT.memory_resample.") for k in extra)
    load_self_attention_weights(sts, monai_net.state_dict())  # the new keys may be missing, nothing else
    x = torch.randn(1, 1, *SIZES[("swin", spatial_dims)])
    ists = build("swin", spatial_dims, memory=True, transmission="ists")
    ists.load_state_dict(monai_net.state_dict())
    assert not torch.allclose(outputs(sts, x), outputs(ists, x), atol=1e-5)


@pytest.mark.parametrize("kind", ["unetr", "swin"])
def test_to_memory_attention_converts_a_built_monai_network_in_place_and_keeps_its_weights(kind):
    torch.manual_seed(0)
    net = build(kind, 3, memory=False)
    x = torch.randn(1, 1, *SIZES[(kind, 3)])
    expected = outputs(net, x)
    converted = to_memory_attention(net, transmission="none")
    assert converted is net and isinstance(net, MemoryUNETR if kind == "unetr" else MemorySwinUNETR)
    assert torch.equal(outputs(net, x), expected)
    to_memory_attention(net)
    assert net.transmission == ("sts" if kind == "unetr" else "ists")
    assert not torch.allclose(outputs(net, x), expected, atol=1e-4)


def record_blocks(blocks, inputs: list, memories: list) -> None:
    """Record each block's input tokens and the memory it hands on (hooks return None: output unchanged)."""

    def hook(module, args, out):
        inputs.append(args[0])
        memories.append(out[1])

    for block in blocks:
        block.register_forward_hook(hook)


def query_projection(block, tokens: torch.Tensor) -> torch.Tensor:
    """The query of one MONAI self-attention block for its input tokens, ``[B, N, inner_dim]``."""
    return block.attn.qkv(block.norm1(tokens))[..., : block.attn.inner_dim]


def test_vit_memory_is_the_running_sum_of_the_query_projections_of_earlier_blocks():
    torch.manual_seed(0)
    vit = MemoryViT(1, img_size=(32, 32, 32), patch_size=8, hidden_size=32, mlp_dim=64, num_layers=4, num_heads=4)
    vit.eval()
    inputs, memories = [], []
    record_blocks(vit.blocks, inputs, memories)
    with torch.no_grad():
        vit(torch.randn(2, 1, 32, 32, 32))
    running = torch.zeros_like(query_projection(vit.blocks[0], inputs[0]))
    for block, tokens, memory in zip(vit.blocks, inputs, memories):
        running = running + query_projection(block, tokens)
        b, heads, n, d = memory.shape
        torch.testing.assert_close(memory.transpose(1, 2).reshape(b, n, heads * d), running)


def test_swin_stage_memory_follows_the_cyclic_shift_token_by_token():
    """In a stage of a regular-window block then a shifted-window block, the memory each block hands on must hold,
    at every token, the sum of that same token's queries: the shift is applied to the memory and undone."""
    torch.manual_seed(0)
    net = MemorySwinUNETR(3, 1, 2, feature_size=12, window_size=4)
    stage: MemoryBasicLayer = net.swinViT.layers1[0]
    assert any(s > 0 for s in stage.blocks[1].shift_size)
    stage.eval()
    inputs, memories = [], []
    record_blocks(stage.blocks, inputs, memories)
    x = torch.randn(2, 12, 16, 12, 8)  # 12 and 8 are not multiples of the window 4 * 2 shifts: padding too
    with torch.no_grad():
        stage(x, None, True)
    c = x.shape[1]
    running = torch.zeros_like(inputs[0])
    for block, tokens, memory in zip(stage.blocks, inputs, memories):
        running = running + block.attn.qkv(block.norm1(tokens))[..., :c]
        torch.testing.assert_close(memory, running)


def test_ists_empties_the_memory_at_each_patch_merging_and_sts_carries_it_on():
    torch.manual_seed(0)
    entering = {}
    for transmission in ("ists", "sts"):
        net = MemorySwinUNETR(2, 1, 2, feature_size=12, window_size=4, transmission=transmission)
        first_block = net.swinViT.layers2[0].blocks[0]
        first_block.register_forward_pre_hook(lambda m, args, t=transmission: entering.__setitem__(t, args[2]))
        outputs(net, torch.randn(1, 1, 64, 64))
    assert entering["ists"] is None
    assert entering["sts"] is not None and entering["sts"].shape == (1, 16, 16, 24)  # stage 2 grid, 2 * feature_size


def test_memory_is_not_detached_gradients_reach_earlier_query_projections():
    """With two blocks, block 1's memory is ``q1 + q0`` under STS and ``q1`` without memory (block 1's input is the
    same in both, since block 0 receives no memory): the STS gradient on block 0's query weights must carry the
    extra ``q0`` term, which a detached memory would drop."""
    memories, grads = {}, {}
    for transmission in ("sts", "none"):
        torch.manual_seed(0)
        vit = MemoryViT(1, img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4,
                        transmission=transmission)  # fmt: skip
        inputs, memories[transmission] = [], []
        record_blocks(vit.blocks, inputs, memories[transmission])
        torch.manual_seed(1)
        vit(torch.randn(1, 1, 32, 32, 32))
        weight = vit.blocks[0].attn.qkv.weight
        grads[transmission] = torch.autograd.grad(memories[transmission][1].sum(), weight, retain_graph=True)[0]
        if transmission == "sts":
            grads["q0"] = torch.autograd.grad(memories["sts"][0].sum(), weight)[0]
    q0 = memories["sts"][0]
    torch.testing.assert_close(memories["sts"][1], memories["none"][1] + q0)
    torch.testing.assert_close(grads["sts"], grads["none"] + grads["q0"])
    assert grads["q0"][:32].abs().sum() > 0


def test_load_self_attention_weights_reads_checkpoint_files_and_names_a_mismatched_one(tmp_path):
    torch.manual_seed(0)
    monai_net = build("swin", 3, memory=False)
    ddp_file = tmp_path / "ddp_checkpoint.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in monai_net.state_dict().items()}}, ddp_file)
    net = load_self_attention_weights(build("swin", 3, memory=True), ddp_file)
    for key, value in monai_net.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key

    wrong = tmp_path / "feature_size_24.pt"
    torch.save(SwinUNETR(1, 3, feature_size=24, window_size=4).state_dict(), wrong)
    with pytest.raises((ValueError, RuntimeError), match="feature_size_24.pt"):
        load_self_attention_weights(build("swin", 3, memory=True), wrong)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_self_attention_weights(build("swin", 3, memory=True), tmp_path / "absent.pt")


def test_invalid_transmission_and_network_are_clear_errors():
    with pytest.raises(ValueError, match="transmission"):
        build("unetr", 3, memory=True, transmission="ists")  # a flat ViT has no stages
    with pytest.raises(ValueError, match="transmission"):
        build("swin", 2, memory=True, transmission="hierarchical")
    with pytest.raises(TypeError, match="ViT, UNETR, SwinTransformer or SwinUNETR"):
        to_memory_attention(torch.nn.Linear(2, 2))


def test_registry_builds_both_memory_networks():
    unetr = get_network("memory_unetr", spatial_dims=3, in_channels=1, out_channels=2, img_size=32, **UNETR_ARGS)
    assert isinstance(unetr, MemoryUNETR)
    swin = get_network("memory_swin_unetr", spatial_dims=3, in_channels=1, out_channels=2, feature_size=12)
    assert isinstance(swin, MemorySwinUNETR)


def test_memory_unetr_survives_torchscript_with_the_same_output():
    torch.manual_seed(0)
    net = build("unetr", 2, memory=True).eval()
    x = torch.randn(1, 1, 64, 64)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_self_supervised_swin_weights_load_through_the_inherited_load_from():
    """MONAI's SSL Swin checkpoints use ``module.`` keys and ``mlp.fc1/fc2``; ``SwinUNETR.load_from`` maps them, and the
    memory variant inherits it unchanged."""
    torch.manual_seed(0)
    source = SwinUNETR(1, 3, feature_size=12).swinViT.state_dict()
    rename = {"mlp.linear1": "mlp.fc1", "mlp.linear2": "mlp.fc2"}
    ssl = {}
    for key, value in source.items():
        for old, new in rename.items():
            key = key.replace(old, new)
        ssl[f"module.{key}"] = value
    net = MemorySwinUNETR(3, 1, 3, feature_size=12)
    net.load_from({"state_dict": ssl})
    for key, value in source.items():
        assert torch.equal(net.swinViT.state_dict()[key], value), key


@pytest.mark.parametrize("how", ["built", "converted"])
@pytest.mark.parametrize(("kind", "transmission"), [("unetr", "sts"), ("unetr", "none"), ("swin", "ists"), ("swin", "sts")])
def test_every_trainable_parameter_gets_a_gradient_as_distributed_data_parallel_requires(kind, transmission, how):
    # DDP fails at its second iteration when a parameter that requires a gradient never receives one (MONAI's
    # TransformerBlock builds a cross-attention LayerNorm that its forward never uses without cross-attention).
    torch.manual_seed(0)
    if how == "built":
        net = build(kind, 2, memory=True, transmission=transmission)
    else:
        net = to_memory_attention(build(kind, 2, memory=False), transmission=transmission)
    net(torch.randn(2, 1, *SIZES[(kind, 2)])).sum().backward()
    no_gradient = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert no_gradient == []
    # the frozen LayerNorm keeps its keys, so MONAI weights still load strictly
    net.load_state_dict(build(kind, 2, memory=False).state_dict(), strict=transmission != "sts" or kind == "unetr")
