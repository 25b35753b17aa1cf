"""HybridEncoder (models/layers/hybrid_encoder.py), RT-DETRv2's encoder: position table, AIFI, CCFM, RepVGG deploy.

The official names and numbers come from tools/reference/rtdetrv2.py (run it with a clone of lyuwenyu/RT-DETR to
regenerate tests/golden/rtdetrv2_reference.pt); the tests never import the official code.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.layers.hybrid_encoder import (
    HybridEncoder,
    RepVggBlock,
    activation_layer,
    rtdetrv2_hybrid_encoder,
    sincos_position_embedding_2d,
)
from tools.reference import rtdetrv2 as reference

TINY = {"in_channels": [8, 16, 24], "hidden_dim": 16, "num_heads": 2, "dim_feedforward": 32, "expansion": 0.5}


@pytest.fixture(scope="module")
def golden() -> dict:
    return reference.load_reference()


def tiny_encoder(**overrides) -> HybridEncoder:
    return rtdetrv2_hybrid_encoder(**{**TINY, **overrides})


def features(sizes, channels=TINY["in_channels"], dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, c, h, w, generator=g, dtype=dtype) for c, (h, w) in zip(channels, sizes)]


def deploy(module: nn.Module) -> None:
    for sub in module.modules():
        if hasattr(sub, "convert_to_deploy"):
            sub.convert_to_deploy()


def test_sincos_table_against_a_direct_computation():
    height, width, dim, temperature = 3, 5, 8, 100.0
    table = sincos_position_embedding_2d(width=width, height=height, dim=dim, temperature=temperature,
                                         dtype=torch.float64)
    assert table.shape == (1, width * height, dim) and table.dtype == torch.float64
    expected = []
    for k in range(width * height):
        a, b = k // height, k % height  # the official order: the first coordinate runs over the width, slowest
        freqs = [temperature ** (-i / (dim // 4)) for i in range(dim // 4)]
        expected.append([math.sin(a * f) for f in freqs] + [math.cos(a * f) for f in freqs]
                        + [math.sin(b * f) for f in freqs] + [math.cos(b * f) for f in freqs])
    expected = torch.tensor(expected, dtype=torch.float64)[None]
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-12)
    single = sincos_position_embedding_2d(width=width, height=height, dim=dim, temperature=temperature)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        sincos_position_embedding_2d(width=2, height=2, dim=6)


def test_on_square_maps_the_table_gives_each_token_its_row_then_its_column():
    n, dim = 4, 8
    table = sincos_position_embedding_2d(width=n, height=n, dim=dim, dtype=torch.float64)[0]
    for y in range(n):
        for x in range(n):
            row = table[y * n + x]  # the row-major token order of a flattened [H, W] map
            assert row[0].item() == pytest.approx(math.sin(y), abs=1e-15)
            assert row[dim // 2].item() == pytest.approx(math.sin(x), abs=1e-15)


def test_position_tables_are_stored_only_with_eval_spatial_size():
    encoder = tiny_encoder(eval_spatial_size=(64, 96), use_encoder_idx=[1, 2])
    assert not any(name.startswith("pos_embed") for name in encoder.state_dict())  # non-persistent
    stored = {name: table for name, table in encoder.named_buffers() if name.startswith("pos_embed")}
    assert sorted(stored) == ["pos_embed1", "pos_embed2"]
    assert torch.equal(stored["pos_embed1"], sincos_position_embedding_2d(width=6, height=4, dim=16))
    assert torch.equal(stored["pos_embed2"], sincos_position_embedding_2d(width=3, height=2, dim=16))
    encoder.double().train()
    like = torch.zeros((), dtype=torch.float64)
    assert encoder.pos_embed2.dtype == torch.float64
    assert torch.equal(encoder.pos_embed2, encoder.position_embedding(2, 2, 3, like))  # computed in training
    assert not any(name.startswith("pos_embed") for name, _ in tiny_encoder().named_buffers())


def test_evaluation_reads_the_stored_table_and_training_computes_it():
    encoder = tiny_encoder(eval_spatial_size=(64, 64))
    reference.perturb(encoder)
    encoder.double().eval()
    stored_size = features([(8, 8), (4, 4), (2, 2)])
    expected = encoder(stored_size)
    without_table = tiny_encoder()
    without_table.load_state_dict(encoder.state_dict())
    for a, b in zip(without_table.double().eval()(stored_size), expected):
        assert torch.equal(a, b)

    with torch.no_grad():
        encoder.pos_embed2.add_(1.0)
    assert not torch.equal(encoder(stored_size)[0], expected[0])
    encoder.train()
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    assert all(torch.equal(a, b) for a, b in zip(encoder(stored_size), expected))

    other_size = features([(12, 12), (6, 6), (3, 3)])  # evaluation at another size computes the table
    encoder.eval()
    for a, b in zip(encoder(other_size), without_table(other_size)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sizes, strides", [([(16, 12), (8, 6), (4, 3)], [8, 16, 32]),
                                            ([(32, 16), (16, 8), (8, 4), (4, 2)], [4, 8, 16, 32]),
                                            ([(5, 7)], [32])])
def test_one_map_per_level_at_the_input_sizes(sizes, strides):
    channels = [8, 16, 24, 32][: len(sizes)]
    encoder = tiny_encoder(in_channels=channels, feat_strides=strides, use_encoder_idx=[len(sizes) - 1]).double()
    outputs = encoder(features(sizes, channels))
    assert [tuple(o.shape) for o in outputs] == [(2, 16, h, w) for h, w in sizes]
    assert all(o.dtype == torch.float64 for o in outputs)
    assert encoder.out_channels == [16] * len(sizes) and encoder.out_strides == strides


def test_fusion_wiring_with_blocks_chosen_by_the_builder():
    """Top-down: the lateral convolution of the coarser map, upsampled, before the finer map; bottom-up: the
    downsampled finer output before that lateral output."""
    encoder = HybridEncoder(in_channels=[4, 6], feat_strides=[8, 16], hidden_dim=8, use_encoder_idx=[],
                            lateral_conv=lambda c: nn.Conv2d(c, c, 1), fusion_block=lambda i, o: nn.Conv2d(i, o, 1),
                            downsample_conv=lambda c: nn.MaxPool2d(2)).double()
    fine, coarse = features([(8, 6), (4, 3)], [4, 6])
    fine, coarse = encoder.input_proj[0](fine), encoder.input_proj[1](coarse)
    lateral = encoder.lateral_convs[0](coarse)
    top_down = encoder.fpn_blocks[0](torch.cat([F.interpolate(lateral, scale_factor=2.0), fine], dim=1))
    bottom_up = encoder.pan_blocks[0](torch.cat([F.max_pool2d(top_down, 2), lateral], dim=1))
    outputs = encoder(features([(8, 6), (4, 3)], [4, 6]))
    torch.testing.assert_close(outputs[0], top_down, rtol=0, atol=0)
    torch.testing.assert_close(outputs[1], bottom_up, rtol=0, atol=0)


def test_repvgg_block_deploys_to_one_convolution_with_the_same_output():
    block = RepVggBlock(6, 8, act="silu")
    reference.perturb(block)
    block.double().eval()
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)

    def by_hand(branch, padding):
        norm = branch.norm
        return F.batch_norm(F.conv2d(x, branch.conv.weight, padding=padding), norm.running_mean, norm.running_var,
                            norm.weight, norm.bias, eps=norm.eps)

    expected = F.silu(by_hand(block.conv1, 1) + by_hand(block.conv2, 0))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)
    block.convert_to_deploy()
    assert block.conv.kernel_size == (3, 3) and block.conv.bias is not None and block.conv.weight.dtype == torch.float64
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-10)
    with torch.no_grad():
        block.conv2.conv.weight.mul_(2.0)  # deploying again folds the new weights
    expected = F.silu(by_hand(block.conv1, 1) + by_hand(block.conv2, 0))
    block.convert_to_deploy()
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-10)


def test_deployed_encoder_computes_the_same_and_adds_only_the_folded_convolutions():
    encoder = tiny_encoder(eval_spatial_size=(64, 64))
    reference.perturb(encoder)
    encoder.double().eval()
    inputs = features([(8, 8), (4, 4), (2, 2)])
    expected = encoder(inputs)
    names = list(encoder.state_dict())
    deploy(encoder)
    for a, b in zip(encoder(inputs), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    blocks = [name for name, m in encoder.named_modules() if isinstance(m, RepVggBlock)]
    assert len(blocks) == 4 * 3
    added = [name for name in encoder.state_dict() if name not in names]
    assert sorted(added) == sorted(f"{b}.conv.{p}" for b in blocks for p in ("weight", "bias"))


@pytest.mark.parametrize("name", sorted(reference.ENCODER_CASES))
def test_tiny_runs_reproduce_the_official_numbers(name, golden):
    """Initial weights from the official seed, perturbed; float64 outputs in training mode, evaluation mode and
    after deploy conversion, and the gradient norms."""
    torch.manual_seed(reference.CASE_SEED)
    kwargs = reference.our_encoder_kwargs(reference.ENCODER_CASES[name][0])
    actual = reference.run_encoder_case(rtdetrv2_hybrid_encoder(**kwargs), name)
    expected = golden["encoder"][name]
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-9, atol=1e-9, msg=f"{name} {key}")


@pytest.mark.parametrize("preset", sorted(reference.ENCODER_PRESETS))
def test_state_dict_names_and_shapes_are_the_official_ones(preset, golden):
    """In training form (with the non-persistent position buffers) and after deploy conversion."""
    with torch.device("meta"):
        encoder = rtdetrv2_hybrid_encoder(**reference.our_encoder_kwargs(reference.ENCODER_PRESETS[preset]))
        assert reference.state_names_and_shapes(encoder) == golden["names"][f"encoder/{preset}"]
        deploy(encoder.eval())
        assert reference.state_names_and_shapes(encoder) == golden["names"][f"encoder_deploy/{preset}"]


@pytest.mark.parametrize("kwargs", [{"use_encoder_idx": [3]}, {"use_encoder_idx": [1, 1]}, {"hidden_dim": 18},
                                    {"feat_strides": [8, 16]}, {"eval_spatial_size": [640]}, {"act": "tanh"}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        tiny_encoder(**kwargs)


def test_wrong_number_of_levels_is_refused():
    with pytest.raises(ValueError, match="3 feature levels"):
        tiny_encoder()(features([(8, 8), (4, 4)]))


def test_activation_names():
    assert isinstance(activation_layer(None), nn.Identity)
    assert isinstance(activation_layer("swish"), nn.SiLU) and activation_layer("SiLU").inplace
    assert isinstance(activation_layer("gelu"), nn.GELU)
