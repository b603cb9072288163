"""Properties of the LMTTM and TTM networks, including each fix of the authors' defects."""

from __future__ import annotations

import pytest
import torch

from lmttm_monai.networks import NETWORKS, get_network
from lmttm_monai.networks.blocks import LinkedMemory, TokenLearner
from lmttm_monai.networks.nets import LMTTM, TTM

SMALL = dict(dim=32, memory_tokens=32, read_tokens=4, num_heads=4, dropout=0.0)


def small(name: str = "lmttm", spatial_dims: int = 3, img_size: int = 28, **kwargs) -> torch.nn.Module:
    options = {**SMALL, **kwargs}
    if name == "ttm":
        options.pop("memory_units", None)
    torch.manual_seed(0)
    return get_network(name, spatial_dims=spatial_dims, in_channels=1, out_channels=3, img_size=img_size, **options)


@pytest.mark.parametrize("name", ["lmttm", "ttm"])
@pytest.mark.parametrize("spatial_dims,img_size", [(3, 28), (3, 64), (2, 28), (2, 64)])
def test_logits_have_one_score_per_class_for_28_and_64_in_2d_and_3d(name, spatial_dims, img_size):
    net = small(name, spatial_dims, img_size).eval()
    for batch in (1, 3):
        with torch.no_grad():
            out = net(torch.rand(batch, 1, *[img_size] * spatial_dims))
        assert out.shape == (batch, 3)
        assert torch.isfinite(out).all()


def test_paper_defaults_build_and_run_on_a_28_cube():
    net = LMTTM(spatial_dims=3, in_channels=1, out_channels=2, img_size=28).eval()
    assert net.num_steps == 9 and net.input_tokens == 81  # 28 with patch 3 -> 9 x 9 x 9, as in the paper
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28, 28)).shape == (2, 2)


@pytest.mark.parametrize("name", ["lmttm", "ttm"])
def test_samples_in_a_batch_do_not_interact(name):
    net = small(name).eval()
    x = torch.rand(4, 1, 28, 28, 28)
    with torch.no_grad():
        together = net(x)
        alone = torch.cat([net(x[i : i + 1]) for i in range(4)])
        changed = x.clone()
        changed[1:] = torch.rand(3, 1, 28, 28, 28)
        first_with_other_neighbours = net(changed)[0]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together[0], first_with_other_neighbours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["lmttm", "ttm"])
def test_eval_mode_is_deterministic_and_memory_starts_fresh_for_every_volume(name):
    net = small(name, dropout=0.2).eval()
    a, b = torch.rand(2, 1, 1, 28, 28, 28)
    state_before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        first = net(a)
        net(b)  # another patient in between must not change the next prediction
        again = net(a)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state_before[key]), f"{key} changed during a forward pass"


@pytest.mark.parametrize("name", ["lmttm", "ttm"])
def test_positional_embeddings_and_initial_memory_are_learned_parameters(name):
    net = small(name).train()
    names = dict(net.named_parameters())
    for key in ("memory.read_embedding", "memory.write_embedding", "memory.initial"):
        assert key in names, f"{key} is not a parameter"
    loss = net(torch.rand(2, 1, 28, 28, 28)).sum()
    loss.backward()
    for key in ("memory.read_embedding", "memory.write_embedding", "memory.initial"):
        assert names[key].grad is not None and names[key].grad.abs().sum() > 0, f"{key} gets no gradient"


def test_zeros_initial_memory_is_zero_and_not_trained():
    net = small(memory_init="zeros")
    assert not net.memory.initial.requires_grad
    assert net.memory.initial_memory(2).abs().sum() == 0


SCENIC = dict(token_learner="scenic", position_embedding=False, memory_init="zeros", process_unit="transformer")


@pytest.mark.parametrize("name", ["lmttm", "ttm"])
def test_scenic_token_machine_has_a_64_wide_bottleneck_no_projection_no_embeddings_and_zero_memory(name):
    net = small(name, **SCENIC)
    for learner in (net.memory.reader, net.memory.writer):
        assert learner.score[1].out_features == 64  # TokenLearnerV11's bottleneck MLP
        assert isinstance(learner.features, torch.nn.Identity)  # its weights apply to the raw tokens
    for embedding in (net.memory.read_embedding, net.memory.write_embedding):
        assert not embedding.requires_grad and embedding.abs().sum() == 0
    assert not net.memory.initial.requires_grad and net.memory.initial.abs().sum() == 0
    trained = {k for k, p in net.named_parameters() if p.requires_grad}
    assert not any("embedding" in k or k == "memory.initial" or "features" in k for k in trained)
    # the same state-dict keys as the authors' variant, less the feature projection it does not have
    authors = set(small(name).state_dict())
    assert set(net.state_dict()) == {k for k in authors if ".features." not in k}
    net.eval()
    x = torch.rand(2, 1, 28, 28, 28)
    assert torch.equal(torch.jit.script(net)(x), net(x))
    with pytest.raises(ValueError, match="token_learner must be one of"):
        small(name, token_learner="v1")


@pytest.mark.parametrize("process_unit", ["transformer", "mixer", "mlp"])
@pytest.mark.parametrize("name", ["lmttm", "ttm"])
def test_every_process_unit_trains(name, process_unit):
    net = small(name, process_unit=process_unit).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.rand(2, 1, 28, 28, 28), torch.tensor([0, 2])
    before = [p.detach().clone() for p in net.parameters()]
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


def test_linked_memory_reads_the_neighbours_of_the_pointer_and_writes_the_next_unit():
    memory_block = LinkedMemory(dim=8, memory_tokens=16, memory_units=4, input_tokens=5, read_tokens=2)
    assert [memory_block.neighbours(t) for t in range(5)] == [(3, 0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 0), (3, 0, 1)]
    memory = torch.rand(2, 4, 4, 8)
    inputs, outputs = torch.rand(2, 5, 8), torch.rand(2, 6, 8)
    read, read_weights = memory_block.read(memory, inputs, step=1)
    assert read.shape == (2, 6, 8) and read_weights.shape == (2, 3, 2, 4 + 5)
    written, write_weights = memory_block.write(memory, inputs, outputs, step=1)
    assert write_weights.shape == (2, 4, 3 * 4 + 5 + 6)
    assert not torch.equal(written[:, 2], memory[:, 2])  # pointer 1 writes unit 2
    for unit in (0, 1, 3):
        assert torch.equal(written[:, unit], memory[:, unit])


def test_token_learner_weights_are_a_distribution_over_input_tokens():
    learner = TokenLearner(dim=16, num_output_tokens=3)
    tokens, weights = learner(torch.rand(2, 10, 16))
    assert tokens.shape == (2, 3, 16) and weights.shape == (2, 3, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))


@pytest.mark.parametrize("name,groups", [("lmttm", 3), ("ttm", 1)])
def test_forward_with_weights_returns_per_step_read_and_write_weights(name, groups):
    net = small(name).eval()
    x = torch.rand(2, 1, 28, 28, 28)
    with torch.no_grad():
        logits, read_weights, write_weights = net.forward_with_weights(x)
        torch.testing.assert_close(logits, net(x))
    assert read_weights.shape[:4] == (2, 9, groups, 4)
    assert write_weights.shape[:2] == (2, 9)
    torch.testing.assert_close(read_weights.sum(-1), torch.ones_like(read_weights.sum(-1)))


def test_sizes_that_are_not_a_multiple_of_the_patch_are_cropped():
    net = small(img_size=30, patch_size=4).eval()  # 30 = 7 * 4 + 2: the last 2 voxels are dropped
    assert net.num_steps == 7 and net.input_tokens == 49
    x = torch.rand(1, 1, 30, 30, 30)
    y = x.clone()
    y[..., 28:] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(y))


@pytest.mark.parametrize("name", ["lmttm", "ttm"])
def test_torchscript_export_gives_the_eager_logits(name):
    net = small(name).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 1, 28, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_registry_builds_each_network_by_name():
    assert set(NETWORKS.names) == {"lmttm", "ttm", "memory_unetr", "memory_swin_unetr", "salstm_unet"}
    assert isinstance(small("lmttm"), LMTTM) and isinstance(small("ttm"), TTM)
    with pytest.raises(ValueError, match="unknown network 'vit'"):
        get_network("vit")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(spatial_dims=1), "spatial_dims must be 2 or 3"),
        (dict(in_channels=0), "in_channels"),
        (dict(out_channels=0), "out_channels"),
        (dict(img_size=2), "smaller than one patch"),
        (dict(memory_units=5), "divisor of memory_tokens"),
        (dict(num_heads=5), "divisible by num_heads"),
        (dict(process_unit="lstm"), "process unit must be one of"),
        (dict(memory_init="random"), "memory_init"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_invalid_arguments_raise_a_clear_value_error(kwargs, message):
    args = dict(spatial_dims=3, in_channels=1, out_channels=2, img_size=28, **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        LMTTM(**args)


@pytest.mark.parametrize(
    "shape,message",
    [((2, 28, 28, 28), "rank 4"), ((2, 3, 28, 28, 28), "1 input channel"), ((2, 1, 32, 32, 32), "spatial size")],
)
def test_wrong_input_shape_raises_a_clear_value_error(shape, message):
    with pytest.raises(ValueError, match=message):
        small()(torch.rand(*shape))


CACHE_OPTIONS = [{}, {"memory_units": 1}, {"memory_units": 2}, {"memory_units": 8, "memory_tokens": 64},
                 {"token_learner": "scenic", "position_embedding": False, "memory_init": "zeros"}]  # fmt: skip


def _outputs_and_gradients(net, x, cache_reads, cache_writes):
    net.cache_reads, net.cache_writes = cache_reads, cache_writes
    net.eval()
    with torch.no_grad():
        logits, reads, writes = net.forward_with_weights(x)
    net.train()
    net.zero_grad()
    torch.manual_seed(7)  # the same dropout masks: every path draws them in the same order and shapes
    net(x).square().sum().backward()
    return logits, reads, writes, [p.grad.clone() for p in net.parameters() if p.grad is not None]


@pytest.mark.parametrize("options", CACHE_OPTIONS)
def test_cached_read_gives_the_plain_reads_logits_weights_and_gradients(options):
    net = small("lmttm", dropout=0.2, **options)
    assert net.cache_reads  # the default
    x = torch.rand(3, 1, 28, 28, 28)
    logits, reads, writes, grads = _outputs_and_gradients(net, x, True, False)
    plain_logits, plain_reads, plain_writes, plain_grads = _outputs_and_gradients(net, x, False, False)
    assert torch.equal(logits, plain_logits) and torch.equal(reads, plain_reads) and torch.equal(writes, plain_writes)
    assert len(grads) == len(plain_grads)
    for g, plain in zip(grads, plain_grads):
        torch.testing.assert_close(g, plain, rtol=1e-5, atol=1e-6)  # the sums run in another order
    net.cache_reads = True
    net.eval()
    with torch.no_grad():
        assert torch.equal(torch.jit.script(net)(x), net(x))


@pytest.mark.parametrize("cache_reads", [True, False])
@pytest.mark.parametrize("options", CACHE_OPTIONS)
def test_cached_write_gives_the_plain_writes_logits_weights_and_gradients_to_float_rounding(options, cache_reads):
    net = small("lmttm", dropout=0.2, **options)
    assert net.cache_writes  # the default
    x = torch.rand(3, 1, 28, 28, 28)
    cached = _outputs_and_gradients(net, x, cache_reads, True)
    plain = _outputs_and_gradients(net, x, cache_reads, False)
    # W (x + p) + b is computed as W x + (W p + b): equal up to float rounding, not bit for bit
    for got, expected in zip(cached[:3], plain[:3]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert len(cached[3]) == len(plain[3])
    for got, expected in zip(cached[3], plain[3]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    net.eval()
    net.cache_writes = True
    with torch.no_grad():
        assert torch.equal(torch.jit.script(net)(x), net(x))


def test_ttm_cached_write_is_its_plain_write():
    net = small("ttm").eval()
    assert not net.cache_writes and not net.cache_reads  # a TTM rewrites its whole memory: nothing to keep
    x = torch.rand(2, 1, 28, 28, 28)
    with torch.no_grad():
        plain = net(x)
        net.cache_writes = True
        assert torch.equal(net(x), plain)


def test_cached_read_and_write_count_fewer_flops_than_the_plain_ones():
    from torch.utils.flop_counter import FlopCounterMode

    net = LMTTM(3, 1, 2, 28, dim=128, memory_tokens=128).eval()
    flops = {}
    for cached in [(True, True), (True, False), (False, False)]:
        net.cache_reads, net.cache_writes = cached
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.rand(4, 1, 28, 28, 28))
        flops[cached] = counter.get_total_flops()
    # reads score 32 + 81 tokens a step instead of 3 x (32 + 81); the writes and the MDU are unchanged
    assert flops[True, False] < 0.75 * flops[False, False]
    # the plain write projects the 3 units of 32 tokens that it sees each step (of 4 volumes, 9 steps); the cached
    # one projects the initial memory once for the batch, each new unit once (not after the last step) and its
    # positional embeddings (3 x 32 + 81 + 24 tokens) once: the rest of the step is the same
    batch, steps, unit, length = 4, net.num_steps, 32, 3 * 32 + 81 + 24
    plain_tokens = batch * steps * 3 * unit
    cached_tokens = 4 * unit + batch * (steps - 1) * unit + length
    assert flops[True, False] - flops[True, True] == (plain_tokens - cached_tokens) * 128 * 128 * 2


def test_authors_mdu_is_one_post_norm_relu_layer_applied_three_times_with_shared_weights():
    net = small("lmttm", num_layers=1, layer_repeats=3, post_norm=True)
    process = net.process
    assert len(process.blocks) == 1 and process.layer_repeats == 3
    layer = process.blocks[0]
    assert not layer.norm_first and layer.activation_relu_or_gelu == 1  # torch's code for ReLU
    assert isinstance(process.norm, torch.nn.Identity)  # no LayerNorm after the stack
    one = small("lmttm", num_layers=1, post_norm=True)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in one.parameters())
    process.eval()
    tokens = torch.rand(2, 12, 32)
    with torch.no_grad():
        torch.testing.assert_close(process(tokens), layer(layer(layer(tokens))))
    with pytest.raises(ValueError, match="post_norm applies to the transformer"):
        small("lmttm", process_unit="mlp", post_norm=True)
    with pytest.raises(ValueError, match="layer_repeats must be a positive integer"):
        small("lmttm", layer_repeats=0)
