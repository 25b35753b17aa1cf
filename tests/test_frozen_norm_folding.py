"""--fold_frozen_bn: frozen norms applied inside their convolutions give the unfolded backbone's features and
gradients up to rounding, keep every state-dict name, and follow loaded statistics, copies and hooks."""
import copy
import json

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from models.backbone import Backbone
from models.backbone_attention import make_plan
from models.frozen_norm_folding import FoldedFrozenBatchNorm2d, NormFoldedConv2d, fold_frozen_batchnorm
from run import run
from util.nested_tensor import NestedTensor


def _resnet(name="resnet50", seed=0, attention=None, norm="frozen_bn"):
    """A randomly initialised ResNet body (stem and layer1 frozen) whose frozen norms hold non-trivial statistics."""
    torch.manual_seed(seed)
    backbone = Backbone(name, trainable_layers=3, return_interm_layers=False, dilation=False, norm=norm,
                        attention=attention)
    for module in backbone.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return backbone


def _features(body, images):
    return body(images)["0"]


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_folding_keeps_features_gradients_and_state_dict():
    """In float64, where rounding cannot flip a ReLU or a max-pool choice, features and every gradient agree to
    1e-10; the state dict is the same, name for name and value for value."""
    plain = _resnet().double()
    folded = copy.deepcopy(plain)
    norms = sum(isinstance(m, FrozenBatchNorm2d) for m in plain.modules())
    assert norms == 53  # stem + 16 bottlenecks x 3 + 4 shortcut projections
    assert fold_frozen_batchnorm(folded) == norms
    assert fold_frozen_batchnorm(folded) == 0  # nothing left to fold
    assert sum(isinstance(m, NormFoldedConv2d) for m in folded.modules()) == norms
    plain_state, folded_state = plain.state_dict(), folded.state_dict()
    assert list(plain_state) == list(folded_state)
    assert all(torch.equal(plain_state[k], folded_state[k]) for k in plain_state)

    images = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    plain_out, folded_out = _features(plain.body, images), _features(folded.body, images)
    torch.testing.assert_close(folded_out, plain_out, rtol=1e-10, atol=1e-10)
    weights = torch.linspace(-1, 1, plain_out.numel(), dtype=torch.float64).view_as(plain_out)
    (plain_out * weights).sum().backward()
    (folded_out * weights).sum().backward()
    trainable = [(n, p) for n, p in plain.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("body.layer2", "body.layer3", "body.layer4")) for n, _ in trainable)
    folded_params = dict(folded.named_parameters())
    for name, param in trainable:
        torch.testing.assert_close(folded_params[name].grad, param.grad, rtol=1e-10, atol=1e-9)
    assert all(p.grad is None for p in folded.parameters() if not p.requires_grad)


def test_float32_features_agree_to_rounding():
    plain = _resnet(name="resnet101")
    folded = copy.deepcopy(plain)
    fold_frozen_batchnorm(folded)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _close(_features(folded.body, images), _features(plain.body, images))


def test_loaded_statistics_and_weights_take_effect_at_once():
    folded, other = _resnet(seed=0), _resnet(seed=1)
    fold_frozen_batchnorm(folded)
    folded.load_state_dict(other.state_dict())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _close(_features(folded.body, images), _features(other.body, images))
        for module in (folded, other):
            module.body.layer4[0].conv2.weight.mul_(2.0)
            module.body.layer4[0].bn2.running_var.mul_(3.0)
        _close(_features(folded.body, images), _features(other.body, images))


def test_a_deep_copy_folds_with_its_own_norms():
    folded = _resnet(name="resnet18")
    fold_frozen_batchnorm(folded)
    twin = copy.deepcopy(folded)  # as --ema copies the model
    own_modules = {id(m) for m in twin.modules()}
    convs = [m for m in twin.modules() if isinstance(m, NormFoldedConv2d)]
    assert len(convs) == 20 and all(id(conv.folded_norm) in own_modules for conv in convs)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = _features(twin.body, images)
        folded.body.bn1.weight.zero_()  # the original's stem norm now outputs only its shift
        assert torch.equal(_features(twin.body, images), before)
        assert not torch.allclose(_features(folded.body, images), before)


def test_convolutions_read_by_attention_hooks_stay_unfolded():
    """aa augments layer4's conv2 outputs before their norm: those three convolutions keep their own output."""
    attention = make_plan("aa", [4], "block", 4)
    plain = _resnet(attention=attention)
    for block in plain.attn.blocks.values():
        for param in block.parameters():  # leave identity, so the hooks really transform the features
            torch.nn.init.normal_(param, std=0.05)
    folded = copy.deepcopy(plain)
    assert fold_frozen_batchnorm(folded) == 53 - 3
    assert all(type(block.conv2) is torch.nn.Conv2d for block in folded.body.layer4)
    assert all(type(block.bn2) is FrozenBatchNorm2d for block in folded.body.layer4)
    images = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        _close(folded(NestedTensor(images, mask))["0"].tensors, plain(NestedTensor(images, mask))["0"].tensors)


def test_trainable_batchnorm_is_not_folded():
    assert fold_frozen_batchnorm(_resnet(name="resnet18", norm="bn")) == 0


def test_folded_norm_passes_hooks_the_normalised_features():
    folded = _resnet(name="resnet18")
    plain = copy.deepcopy(folded)
    fold_frozen_batchnorm(folded)
    assert isinstance(folded.body.layer3[1].bn2, FoldedFrozenBatchNorm2d)
    seen = {}
    for name, module in (("plain", plain), ("folded", folded)):
        module.body.layer3[1].bn2.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _features(plain.body, images), _features(folded.body, images)
    _close(seen["folded"], seen["plain"])


def test_autocast_keeps_the_unfolded_dtypes():
    """bf16 autocast: the unfolded norms promote each convolution's output back to fp32, and so does the fold."""
    plain = _resnet(name="resnet18")
    folded = copy.deepcopy(plain)
    fold_frozen_batchnorm(folded)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain_out, folded_out = _features(plain.body, images), _features(folded.body, images)
        stem = folded.body.bn1(folded.body.conv1(images))
    assert plain_out.dtype == folded_out.dtype == stem.dtype == torch.float32
    torch.testing.assert_close(folded_out, plain_out, rtol=0.05, atol=0.05 * plain_out.abs().max().item())


@pytest.fixture(scope="module")
def small_coco(tmp_path_factory):
    from tools.data.synthetic import generate
    return generate(tmp_path_factory.mktemp("fold_data"), num_train=8, num_val=4, image_size=64, seed=3)


def test_main_py_trains_folded_as_unfolded(small_coco, tiny_args, tmp_path, monkeypatch):
    import run as run_module

    folded_counts = []
    monkeypatch.setattr(run_module, "fold_frozen_batchnorm",
                        lambda module: folded_counts.append(fold_frozen_batchnorm(module)) or folded_counts[-1])
    logs = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        run(tiny_args(small_coco, "--backbone_norm", "frozen_bn", "--backbone_trainable_layers", "3", "--epochs", "1",
                      "--fold_frozen_bn", mode, "--output_dir", str(out)))
        logs[mode] = json.loads((out / "log.txt").read_text().splitlines()[-1])
    for key, value in logs["off"].items():
        if isinstance(value, float) and key != "train_epoch_time":
            assert logs["on"][key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    assert folded_counts == [20]  # one run folded, every norm of its resnet18
