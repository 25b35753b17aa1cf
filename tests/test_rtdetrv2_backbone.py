"""PResNet (models/rtdetrv2/presnet.py), RT-DETRv2's ResNet-vd backbone.

The official names and numbers come from tools/reference/rtdetrv2.py (run it with a clone of lyuwenyu/RT-DETR to
regenerate tests/golden/rtdetrv2_reference.pt); the tests never import the official code.
"""
import inspect
import math
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from models import backbone_attention
from models.rtdetrv2.presnet import PRETRAINED_URLS, PResNet
from tools.reference import rtdetrv2 as reference

# He et al. (1512.03385), table 1: residual blocks per stage, and each stage's output channels
BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
BASIC_CHANNELS, BOTTLENECK_CHANNELS = [64, 128, 256, 512], [256, 512, 1024, 2048]


@pytest.fixture(scope="module")
def golden() -> dict:
    return reference.load_reference()


def norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]


@pytest.mark.parametrize("depth", sorted(BLOCKS))
def test_every_depth_returns_its_stages_at_strides_4_to_32(depth):
    model = PResNet(depth=depth, freeze_norm=False).eval()
    height, width = 70, 45  # odd sizes: every stride-2 step rounds up
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, height, width))
    channels = BASIC_CHANNELS if depth < 50 else BOTTLENECK_CHANNELS
    assert [len(stage) for stage in model.res_layers] == BLOCKS[depth]
    assert model.out_channels == channels and model.out_strides == [4, 8, 16, 32]
    for output, stride, c in zip(outputs, model.out_strides, channels):
        steps = int(math.log2(stride))
        expected = [height, width]
        for _ in range(steps):
            expected = [math.ceil(size / 2) for size in expected]
        assert output.shape == (1, c, *expected)


def test_return_idx_and_num_stages_choose_the_outputs():
    model = PResNet(depth=18, num_stages=3, return_idx=[0, 2], freeze_norm=False)
    outputs = model(torch.randn(2, 3, 64, 32))
    assert len(model.res_layers) == 3
    assert [o.shape[1:] for o in outputs] == [(64, 16, 8), (256, 4, 2)]
    assert model.out_channels == [64, 256] and model.out_strides == [4, 16]


@pytest.mark.parametrize("kwargs", [{"depth": 152}, {"depth": 18, "variant": "e"}, {"depth": 18, "num_stages": 5},
                                    {"depth": 18, "return_idx": [2, 1]}, {"depth": 18, "return_idx": []},
                                    {"depth": 18, "num_stages": 3, "return_idx": [3]}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        PResNet(**kwargs)


def test_variant_d_stem_and_average_pool_shortcuts():
    model = PResNet(depth=50, freeze_norm=False)
    stem = [m.conv for m in model.conv1]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    first = model.residual_stage(1)[0]  # a projection without downsampling: a 1x1 convolution of stride 1
    assert first.short.conv.kernel_size == (1, 1) and first.short.conv.stride == (1, 1)
    for number in (2, 3, 4):
        block = model.residual_stage(number)[0]
        assert block.branch2a.conv.stride == (1, 1) and block.branch2b.conv.stride == (2, 2)
        assert isinstance(block.short.pool, nn.AvgPool2d) and block.short.conv.conv.stride == (1, 1)
        assert all(later.short is None for later in list(model.residual_stage(number))[1:])


def test_variant_d_shortcut_pools_before_its_convolution():
    model = PResNet(depth=18, freeze_norm=False).double().eval()
    reference.perturb(model)
    block = model.residual_stage(2)[0]
    x = torch.randn(2, 64, 9, 7, dtype=torch.float64)
    conv, norm = block.short.conv.conv, block.short.conv.norm
    pooled = F.avg_pool2d(x, 2, ceil_mode=True)  # ceil mode: the last row and column are averaged alone
    expected = F.batch_norm(F.conv2d(pooled, conv.weight), norm.running_mean, norm.running_var, norm.weight,
                            norm.bias, eps=1e-5)
    torch.testing.assert_close(block.short(x), expected, rtol=0, atol=1e-12)
    assert block.short(x).shape[-2:] == (5, 4)


@pytest.mark.parametrize("variant", ["a", "b"])
def test_other_variants(variant):
    model = PResNet(depth=50, variant=variant, freeze_norm=False)
    block = model.residual_stage(2)[0]
    if variant == "a":  # stride on the first 1x1 convolution
        assert block.branch2a.conv.stride == (2, 2) and block.branch2b.conv.stride == (1, 1)
    else:  # a 7x7 stem and strided 1x1 shortcuts
        assert [m.conv.kernel_size for m in model.conv1] == [(7, 7)]
        assert block.short.conv.stride == (2, 2)
    assert [o.shape[-1] for o in model(torch.randn(1, 3, 64, 64))] == [16, 8, 4, 2]


@pytest.mark.parametrize("freeze_at", [-1, 0, 1, 3])
def test_freeze_at_stops_the_gradients_of_the_stem_and_the_first_stages(freeze_at):
    model = PResNet(depth=18, freeze_at=freeze_at, freeze_norm=False)
    frozen_modules = [] if freeze_at < 0 else [model.conv1, *model.res_layers[:freeze_at]]
    frozen = {id(p) for module in frozen_modules for p in module.parameters()}
    assert len(frozen) == sum(len(list(m.parameters())) for m in frozen_modules)
    model(torch.randn(2, 3, 32, 32))[-1].sum().backward()
    for param in model.parameters():
        assert param.requires_grad == (id(param) not in frozen)
        assert (param.grad is None) == (id(param) in frozen)


def test_freeze_at_the_number_of_stages_or_more_freezes_everything():
    assert not any(p.requires_grad for p in PResNet(depth=18, freeze_at=4, freeze_norm=False).parameters())
    assert not any(p.requires_grad for p in PResNet(depth=18, num_stages=2, return_idx=[1], freeze_at=3,
                                                    freeze_norm=False).parameters())


def test_freeze_norm_fixes_every_norm():
    model = PResNet(depth=50, freeze_norm=True)
    assert norms(model) and all(type(m) is FrozenBatchNorm2d and m.eps == 1e-5 for m in norms(model))
    assert not any(name.endswith("num_batches_tracked") for name in model.state_dict())
    reference.perturb(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    training = model.train()(x)
    evaluation = model.eval()(x)
    assert all(torch.equal(a, b) for a, b in zip(training, evaluation))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_trainable_norms_learn_their_statistics():
    model = PResNet(depth=18, freeze_norm=False)
    assert norms(model) and all(type(m) is nn.BatchNorm2d for m in norms(model))
    model.train()(torch.randn(2, 3, 32, 32))
    assert all(m.num_batches_tracked.item() == 1 and not torch.equal(m.running_mean, torch.zeros_like(
        m.running_mean)) for m in norms(model))


def test_frozen_norm_computes_batchnorm_in_evaluation_mode():
    trainable = PResNet(depth=18, freeze_norm=False)
    reference.perturb(trainable)
    frozen = PResNet(depth=18, freeze_norm=True)
    frozen.load_state_dict(trainable.state_dict())  # num_batches_tracked is dropped on loading
    x = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    expected = trainable.double().eval()(x)
    for a, b in zip(frozen.double()(x), expected):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize("name", sorted(reference.BACKBONE_CASES))
def test_tiny_runs_reproduce_the_official_numbers(name, golden):
    """Initial weights from the official seed, perturbed; float64 outputs in training and evaluation mode and the
    gradient norms."""
    torch.manual_seed(reference.CASE_SEED)
    actual = reference.run_backbone_case(PResNet(**reference.BACKBONE_CASES[name][0]), name)
    expected = golden["backbone"][name]
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-9, atol=1e-9, msg=f"{name} {key}")


@pytest.mark.parametrize("preset", sorted(reference.BACKBONE_PRESETS))
def test_state_dict_names_and_shapes_are_the_official_ones(preset, golden):
    with torch.device("meta"):
        model = PResNet(**reference.BACKBONE_PRESETS[preset])
    assert reference.state_names_and_shapes(model) == golden["names"][f"backbone/{preset}"]


def test_weights_load_only_when_asked(monkeypatch, tmp_path):
    source = PResNet(depth=18, freeze_norm=False)
    reference.perturb(source)
    asked = []

    def from_url(url, **kwargs):
        asked.append(url)
        return source.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", from_url)
    PResNet(depth=18, freeze_norm=False)
    assert asked == []
    downloaded = PResNet(depth=18, freeze_norm=False, pretrained=True)
    assert asked == [PRETRAINED_URLS[18]]
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    from_file = PResNet(depth=18, freeze_norm=False, pretrained=str(path))
    for model in (downloaded, from_file):
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_missing_weights_without_a_network_say_where_to_put_them(monkeypatch):
    def offline(url, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match="ResNet50_vd_ssld_v2_pretrained_from_paddle.pth"):
        PResNet(depth=50, pretrained=True)


@pytest.mark.parametrize("depth", [18, 50])
def test_blocks_name_the_places_of_attention(depth):
    """``last_norm``'s output is what a block adds to its shortcut; ``spatial_conv`` is its (strided) 3x3."""
    model = PResNet(depth=depth, freeze_norm=False).double().eval()
    reference.perturb(model)
    for number in (1, 2, 3, 4):
        stage = model.residual_stage(number)
        assert stage is model.res_layers[number - 1] and list(stage) == list(stage.blocks)
    block = model.residual_stage(2)[0]
    stride = (1, 1) if depth < 50 else (2, 2)  # a basic block's second 3x3, a bottleneck's only one
    assert block.spatial_conv.kernel_size == (3, 3) and block.spatial_conv.stride == stride
    x = torch.randn(2, model.out_channels[0], 8, 8, dtype=torch.float64)
    handle = block.last_norm.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
    torch.testing.assert_close(block(x), F.relu(block.short(x)), rtol=0, atol=0)
    handle.remove()
    with pytest.raises(ValueError):
        model.residual_stage(5)


placement_reads_presnet = pytest.mark.skipif(
    "residual_stage" not in inspect.getsource(backbone_attention),
    reason="models/backbone_attention.py does not read PResNet's residual_stage / last_norm / spatial_conv yet")


@placement_reads_presnet
@pytest.mark.parametrize("block, position", [("se", "block"), ("gc", "stage"), ("aa", "block")])
def test_attention_blocks_are_identities_at_init_and_keep_the_official_names(block, position):
    model = PResNet(depth=18, freeze_norm=False).eval()
    names = list(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    attention = backbone_attention.MaskedAttention(model, backbone_attention.make_plan(block, None, position, 4))
    assert all(torch.equal(a, b) for a, b in zip(model(x), expected))
    assert list(model.state_dict()) == names
    reference.perturb(attention)
    assert not all(torch.equal(a, b) for a, b in zip(model(x), expected))
