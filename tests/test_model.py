"""models.detr.DETR end to end on tiny models, hubconf's official architecture, freezing and parameter groups."""
import pytest
import torch
from torch import nn

import cli
import hubconf
from models.backbone import BackboneBase, Joiner
from models.detr import DETR, build
from models.detr.transformer import Transformer
from models.param_groups import build_param_groups
from models.position_encoding import PositionEmbeddingSine
from util.nested_tensor import nested_tensor_from_tensor_list

NUM_CLASSES = 5


def _tiny(tiny_args, *extra, seed=0):
    torch.manual_seed(seed)
    model, _, _ = build(tiny_args("unused", "--num_classes", str(NUM_CLASSES), *extra))
    return model


def test_output_shapes_for_images_of_different_sizes(tiny_args):
    model = _tiny(tiny_args, "--dec_layers", "3").eval()
    images = [torch.randn(3, 64, 48), torch.randn(3, 40, 96), torch.randn(3, 72, 72)]
    with torch.no_grad():
        out = model(images)
    assert out["pred_logits"].shape == (3, 8, NUM_CLASSES + 1)
    assert out["pred_boxes"].shape == (3, 8, 4)
    assert (out["pred_boxes"] >= 0).all() and (out["pred_boxes"] <= 1).all()
    assert len(out["aux_outputs"]) == 2
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (3, 8, NUM_CLASSES + 1) and aux["pred_boxes"].shape == (3, 8, 4)
    assert "aux_outputs" not in _tiny(tiny_args, "--no_aux_loss").eval()(images)


class _PatchNet(nn.Module):
    """A ResNet-shaped stand-in (conv1, bn1, layer1..4) whose only layer is a 32x32 convolution of stride 32:
    each feature cell sees exactly its own 32x32 block, so, for images whose sides are multiples of 32, the
    valid cells do not depend on padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, kernel_size=32, stride=32)
        self.bn1 = nn.Identity()
        self.layer1, self.layer2, self.layer3, self.layer4 = (nn.Identity() for _ in range(4))


def test_prediction_does_not_depend_on_the_rest_of_the_batch():
    # The real ResNet is not padding-invariant near the right/bottom border (nor is the official DETR's): an
    # intermediate feature map just outside the valid area holds activations spilling over from the image in a
    # padded batch, where an image alone sees the convolution's zero padding, and the next 3x3 convolution reads
    # them. So the ResNet is replaced by a patch embedding that is invariant; everything DETR adds on top (mask
    # resizing, positional encoding, masked attention in the transformer, heads) must then keep the invariance.
    torch.manual_seed(0)
    backbone = Joiner(BackboneBase(_PatchNet(16), trainable_layers=5, num_channels=16, return_interm_layers=False),
                      PositionEmbeddingSine(16, normalize=True))
    transformer = Transformer(d_model=32, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64,
                              dropout=0.0, return_intermediate_dec=True)
    model = DETR(backbone, transformer, num_classes=NUM_CLASSES, num_queries=8, aux_loss=True).eval()
    small = torch.randn(3, 64, 96)
    with torch.no_grad():
        alone = model([small])
        batched = model([small, torch.randn(3, 128, 128) * 5])
    assert torch.allclose(batched["pred_logits"][0], alone["pred_logits"][0], atol=1e-4)
    assert torch.allclose(batched["pred_boxes"][0], alone["pred_boxes"][0], atol=1e-4)
    for a, b in zip(alone["aux_outputs"], batched["aux_outputs"]):
        assert torch.allclose(b["pred_boxes"][0], a["pred_boxes"][0], atol=1e-4)


def test_transformer_ignores_padded_tokens():
    # Same valid features and positions; the padded area holds arbitrary values in the batched call.
    torch.manual_seed(0)
    transformer = Transformer(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32,
                              dropout=0.0, return_intermediate_dec=True).eval()
    queries = torch.randn(5, 16)
    h, w, big_h, big_w = 3, 4, 5, 6
    src, pos = torch.randn(1, 16, h, w), torch.randn(1, 16, h, w)
    big_src, big_pos = torch.randn(2, 16, big_h, big_w) * 10, torch.randn(2, 16, big_h, big_w) * 10
    big_src[0, :, :h, :w], big_pos[0, :, :h, :w] = src[0], pos[0]
    mask = torch.zeros(2, big_h, big_w, dtype=torch.bool)
    mask[0] = True
    mask[0, :h, :w] = False
    with torch.no_grad():
        hs_alone, memory_alone = transformer(src, torch.zeros(1, h, w, dtype=torch.bool), queries, pos)
        hs_batched, memory_batched = transformer(big_src, mask, queries, big_pos)
    assert hs_alone.shape == (2, 1, 5, 16)
    assert torch.allclose(hs_batched[:, 0], hs_alone[:, 0], atol=1e-5)
    assert torch.allclose(memory_batched[0, :, :h, :w], memory_alone[0], atol=1e-5)


def test_state_dict_round_trip(tiny_args):
    source = _tiny(tiny_args, seed=0).eval()
    target = _tiny(tiny_args, seed=1).eval()
    images = [torch.randn(3, 64, 64)]
    with torch.no_grad():
        expected = source(images)
        assert not torch.allclose(target(images)["pred_logits"], expected["pred_logits"])
        target.load_state_dict(source.state_dict(), strict=True)
        got = target(images)
    assert torch.equal(got["pred_logits"], expected["pred_logits"])
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])


@pytest.fixture(scope="module")
def detr_r50():
    return hubconf.detr_resnet50(pretrained=False)


def test_hub_r50_parameter_count_matches_official_log(detr_r50):
    # "n_parameters": 41302368 in the official DETR R50 training logs (frozen BN, stem and layer1 frozen).
    assert sum(p.numel() for p in detr_r50.parameters() if p.requires_grad) == 41_302_368


def test_hub_r50_state_dict_keys_match_official_names(detr_r50):
    sd = detr_r50.state_dict()
    assert not [k for k in sd if "num_batches_tracked" in k]
    for key in ("backbone.0.body.layer1.0.conv1.weight", "backbone.0.body.bn1.running_mean",
                "transformer.decoder.norm.weight", "transformer.encoder.layers.5.self_attn.in_proj_weight",
                "query_embed.weight", "bbox_embed.layers.2.bias", "input_proj.weight"):
        assert key in sd, key
    assert not [k for k in sd if k.startswith("backbone.0.body.fc")]
    assert sd["class_embed.weight"].shape == (92, 256)
    assert sd["query_embed.weight"].shape == (100, 256)
    assert sd["bbox_embed.layers.2.bias"].shape == (4,)


def test_hub_builds_without_network_and_returns_postprocessor():
    model, postprocessor = hubconf.detr_resnet50_dc5(pretrained=False, num_classes=10, return_postprocessor=True)
    body = model.backbone[0].body
    # torchvision's DC5: layer4 keeps stride 1; its first block keeps dilation 1, the later ones use 2.
    assert body.layer4[0].conv2.stride == (1, 1) and body.layer4[0].downsample[0].stride == (1, 1)
    assert all(block.conv2.dilation == (2, 2) for block in body.layer4[1:])
    assert body.layer3[1].conv2.dilation == (1, 1)
    with torch.no_grad():
        features, _ = model.backbone(nested_tensor_from_tensor_list([torch.zeros(3, 64, 64)]))
    assert features[-1].tensors.shape[-2:] == (4, 4)  # stride 16 instead of 32
    assert model.class_embed.out_features == 11
    with torch.no_grad():
        (result,) = postprocessor(model.eval()(nested_tensor_from_tensor_list([torch.rand(3, 64, 48)])),
                                  torch.tensor([[480, 640]]))
    assert result["boxes"].shape == (100, 4) and result["labels"].max() < 11
    assert (result["boxes"][:, 0::2].abs() <= 640 * 1.5).all()  # pixels of the 640-wide original, not [0, 1]
    with pytest.raises(ValueError, match="91"):
        hubconf.detr_resnet50(pretrained=True, num_classes=10)


def _requires_grad(modules) -> set[bool]:
    return {p.requires_grad for m in modules for p in m.parameters()}


def test_backbone_trainable_layers_freezes_stem_and_layer1(tiny_args):
    model = _tiny(tiny_args, "--backbone_trainable_layers", "3")
    body = model.backbone[0].body
    assert _requires_grad([body.conv1, body.bn1, body.layer1]) == {False}
    assert _requires_grad([body.layer2, body.layer3, body.layer4]) == {True}
    assert _requires_grad([model.transformer, model.class_embed, model.bbox_embed, model.input_proj]) == {True}


def test_lr_backbone_zero_freezes_the_whole_backbone(tiny_args):
    model = _tiny(tiny_args, "--lr_backbone", "0")
    assert _requires_grad([model.backbone]) == {False}
    assert _requires_grad([model.transformer, model.query_embed]) == {True}


def test_build_param_groups_by_identity(tiny_args):
    model = _tiny(tiny_args, "--backbone_trainable_layers", "3")
    groups = build_param_groups(model, lr_backbone=1e-5)
    assert len(groups) == 2 and groups[1]["lr"] == 1e-5
    backbone_trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    others = [p for name, m in model.named_children() if name != "backbone" for p in m.parameters()]
    assert len(backbone_trainable) > 0
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in backbone_trainable}
    assert len(groups[1]["params"]) == len(backbone_trainable)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in others}
    assert len(groups[0]["params"]) == len(others)


def test_model_accepts_nested_tensor(tiny_args):
    model = _tiny(tiny_args).eval()
    images = [torch.randn(3, 64, 48), torch.randn(3, 48, 64)]
    with torch.no_grad():
        from_list = model(images)
        from_nested = model(nested_tensor_from_tensor_list(images))
    assert torch.equal(from_list["pred_logits"], from_nested["pred_logits"])


def test_imagenet_weights_are_requested_only_when_training_starts_from_them(monkeypatch):

    from models.backbone import wants_imagenet_weights

    parse = cli.get_args_parser().parse_args
    assert wants_imagenet_weights(parse([]))
    for flags in (["--eval"], ["--resume", "x.pth"], ["--finetune_from", "x.pth"], ["--no_pretrained_backbone"]):
        assert not wants_imagenet_weights(parse(flags)), flags



def test_missing_imagenet_weights_without_network_fail_early_with_the_file_to_copy(monkeypatch, tmp_path):
    from urllib.error import URLError

    import torchvision

    from models.backbone import build_backbone, imagenet_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    requested = []

    def no_network(url, dst, *args, **kwargs):
        requested.append(url)
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    args = cli.get_args_parser().parse_args(["--backbone", "resnet18", "--device", "cpu"])
    with pytest.raises(FileNotFoundError) as excinfo:
        build_backbone(args)
    expected = imagenet_weights_file("resnet18")
    assert expected == tmp_path / "hub" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert requested == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    message = str(excinfo.value)
    assert str(expected) in message and "--no_pretrained_backbone" in message and "\n" not in message

    # Once the file is where the message says, the backbone starts from it without any download.
    weights = torchvision.models.resnet18().state_dict()
    expected.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, expected)
    backbone = build_backbone(args)[0].body
    assert torch.equal(backbone.layer1[0].conv1.weight, weights["layer1.0.conv1.weight"])
    assert len(requested) == 1


def test_frozen_stages_keep_batchnorm_statistics_in_training():
    from models.backbone import Backbone

    backbone = Backbone("resnet18", trainable_layers=3, return_interm_layers=False, dilation=False, norm="bn")
    backbone.train()
    body = backbone.body
    assert not body.bn1.training and not body.layer1[0].bn1.training  # stem and layer1 are frozen
    assert body.layer2[0].bn1.training and body.layer4[1].bn2.training
    before = body.layer1[0].bn1.running_mean.clone()
    backbone(nested_tensor_from_tensor_list([torch.rand(3, 64, 64), torch.rand(3, 64, 64)]))
    assert torch.equal(body.layer1[0].bn1.running_mean, before)
    assert not torch.equal(body.layer2[0].bn1.running_mean, torch.zeros_like(body.layer2[0].bn1.running_mean))


def test_groupnorm_backbone_normalises_each_image_alone():
    from models.backbone import Backbone

    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64) * 3]
    outputs = {}
    for norm in ("gn", "bn"):
        backbone = Backbone("resnet18", trainable_layers=4, return_interm_layers=False, dilation=False, norm=norm,
                            last_layer="layer3").train()
        together = backbone(nested_tensor_from_tensor_list(images))["0"].tensors[0]
        alone = backbone(nested_tensor_from_tensor_list(images[:1]))["0"].tensors[0]
        outputs[norm] = (backbone, together, alone)
    groupnorm_backbone, together, alone = outputs["gn"]
    norms = [m for m in groupnorm_backbone.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert len(norms) == 15 and all(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in norms)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)  # the batch partner changes nothing
    _, together, alone = outputs["bn"]  # trainable BatchNorm's batch statistics do depend on it
    assert (together - alone).abs().max() > 1e-2
    with pytest.raises(ValueError, match="GroupNorm has no ImageNet weights"):
        Backbone("resnet18", trainable_layers=3, return_interm_layers=False, dilation=False, pretrained=True,
                 norm="gn")


def test_groupnorm_flag_needs_a_backbone_trained_from_scratch(tiny_args):
    with pytest.raises(ValueError, match="--backbone_norm gn .* add --no_pretrained_backbone"):
        cli.check_args(cli.get_args_parser().parse_args(["--backbone_norm", "gn"]))
    cli.check_args(tiny_args("unused", "--backbone_norm", "gn"))  # TINY_FLAGS train from random weights
    evaluation = cli.get_args_parser().parse_args(["--backbone_norm", "gn", "--eval", "--resume", "model.pth"])
    cli.check_args(evaluation)  # loads its weights: the ImageNet ones are never read


def test_layer3_features_count_trainable_stages_from_layer3():
    from models.backbone import Backbone

    backbone = Backbone("resnet18", trainable_layers=1, return_interm_layers=False, dilation=False,
                        last_layer="layer3")
    assert backbone.num_channels == 256
    assert all(p.requires_grad for p in backbone.body.layer3.parameters())
    assert not any(p.requires_grad for p in backbone.body.layer2.parameters())
    assert "layer4" not in dict(backbone.body.named_children())
    with pytest.raises(ValueError, match="trainable_layers"):
        Backbone("resnet18", trainable_layers=5, return_interm_layers=False, dilation=False, last_layer="layer3")
    with pytest.raises(ValueError, match="dilation"):
        Backbone("resnet50", trainable_layers=3, return_interm_layers=False, dilation=True, last_layer="layer3")


def test_layer2_features_have_stride_8_and_stop_the_network_after_layer2():
    from models.backbone import Backbone

    backbone = Backbone("resnet18", trainable_layers=2, return_interm_layers=False, dilation=False, norm="bn",
                        last_layer="layer2")
    assert backbone.num_channels == 128 and backbone.strides == [8]
    assert set(dict(backbone.body.named_children())) == {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2"}
    assert all(p.requires_grad for p in backbone.body.layer1.parameters())
    assert not any(p.requires_grad for p in backbone.body.conv1.parameters())
    features = backbone(nested_tensor_from_tensor_list([torch.rand(3, 64, 96), torch.rand(3, 40, 72)]))["0"]
    assert features.tensors.shape == (2, 128, 8, 12)
    assert features.mask[1].sum() == 8 * 12 - 5 * 9  # the smaller image's padding, at 1/8 of its pixels
    resnet50 = Backbone("resnet50", trainable_layers=0, return_interm_layers=False, dilation=False,
                        last_layer="layer2")
    assert resnet50.num_channels == 512  # layer2 of a bottleneck ResNet: 4 x 128 channels


def test_detr_on_layer2_features_reads_a_token_per_8_pixels_and_trains_layer2(tiny_args):
    torch.manual_seed(0)
    model, criterion, _ = build(tiny_args("unused", "--num_classes", str(NUM_CLASSES), "--feature_layer", "layer2",
                                          "--backbone_trainable_layers", "3"))
    images = [torch.randn(3, 64, 48), torch.randn(3, 40, 96)]
    features, _ = model.backbone(nested_tensor_from_tensor_list(images))
    assert features[-1].tensors.shape[-2:] == (8, 12)  # the batch pads to 64 x 96
    outputs = model(images)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])},
               {"labels": torch.tensor([2, 3]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.7, 0.6, 0.3, 0.5]])}]
    losses = criterion(outputs, targets)
    sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict).backward()
    assert model.backbone[0].body.layer2[0].conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("flags, named", [
    (["--backbone_trainable_layers", "5", "--feature_layer", "layer3"], "--backbone_trainable_layers"),
    (["--backbone_trainable_layers", "4", "--feature_layer", "layer2"], "--backbone_trainable_layers"),
    (["--masks", "--feature_layer", "layer2"], "--feature_layer"),
    (["--dilation", "--feature_layer", "layer3"], "--dilation"),
    (["--dilation", "--backbone", "resnet18"], "--dilation"),
    (["--backbone", "resnet152"], "--backbone"),
    (["--backbone_attn", "nl", "--attn_position", "block"], "--attn_position"),
    (["--backbone_attn", "gc", "--attn_stages", "4", "--feature_layer", "layer3"], "--attn_stages"),
    (["--masks", "--hidden_dim", "32", "--nheads", "2"], "--hidden_dim"),
    (["--hidden_dim", "30", "--nheads", "4"], "--hidden_dim"),
    (["--query_groups", "0"], "--query_groups"),
    (["--meta_arch", "detr2"], "--meta_arch"),
])
def test_flag_values_that_cannot_work_are_errors_naming_the_flag(flags, named):
    with pytest.raises(ValueError, match=named):
        cli.check_args(cli.get_args_parser().parse_args(flags))
