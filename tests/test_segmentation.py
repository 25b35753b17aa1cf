"""models.segmentation: the mask head's parts against hand computations and torchvision, official names and shapes,
the frozen two-stage recipe, and the post-processors on hand-built outputs."""
import io
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cli
import hubconf
from models import build_model
from models.detr import SetCriterion
from models.detr.segmentation import (
    DETRsegm,
    MaskHeadSmallConv,
    MHAttentionMap,
    PostProcessPanoptic,
    PostProcessSegm,
)
from models.losses import dice_loss, sigmoid_focal_loss
from models.matcher import HungarianMatcher
from models.param_groups import build_param_groups
from util.panoptic_png import rgb2id

TINY_SEGM = ["--backbone", "resnet18", "--no_pretrained_backbone", "--backbone_norm", "bn", "--hidden_dim", "64",
             "--nheads", "8", "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries",
             "5", "--dropout", "0", "--feature_layer", "layer3", "--masks", "--num_classes", "7", "--device", "cpu"]


def tiny_segm_args(*extra):
    return cli.get_args_parser().parse_args([*TINY_SEGM, *extra])


def test_dice_loss_hand_computed():
    # sigmoid(0) = 0.5 everywhere; target has 3 of 4 pixels on: 1 - (2 * 1.5 + 1) / (2 + 3 + 1) = 1/3
    loss = dice_loss(torch.zeros(1, 4), torch.tensor([[1.0, 0, 1, 1]]), num_boxes=1)
    assert loss.item() == pytest.approx(1 / 3)
    # two masks divided by num_boxes = 2: a perfect-ish prediction adds almost 0
    perfect = torch.tensor([[1.0, 0, 1, 1]]) * 40 - 20
    both = dice_loss(torch.cat([torch.zeros(1, 4), perfect]), torch.tensor([[1.0, 0, 1, 1]] * 2), num_boxes=2)
    assert both.item() == pytest.approx(1 / 6, abs=1e-6)


def test_sigmoid_focal_loss_matches_torchvision():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=gen) * 3
    targets = (torch.rand(6, 50, generator=gen) > 0.7).float()
    expected = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2, reduction="none")
    assert sigmoid_focal_loss(logits, targets, num_boxes=4).item() == pytest.approx(
        expected.mean(1).sum().item() / 4, rel=1e-6)


def test_mh_attention_map_matches_a_loop_and_ignores_padding():
    torch.manual_seed(0)
    attn = MHAttentionMap(16, 16, num_heads=4)
    q, k = torch.randn(2, 3, 16), torch.randn(2, 16, 5, 6)
    mask = torch.zeros(2, 5, 6, dtype=torch.bool)
    mask[1, :, 4:] = True
    weights = attn(q, k, mask)
    assert weights.shape == (2, 3, 4, 5, 6)
    # by hand: per head, dot products of projected q and k scaled by 1/sqrt(head_dim); softmax over heads x positions
    qp = q @ attn.q_linear.weight.T + attn.q_linear.bias
    kp = torch.einsum("dc,bchw->bdhw", attn.k_linear.weight, k) + attn.k_linear.bias[:, None, None]
    for b in range(2):
        for i in range(3):
            scores = torch.stack([(qp[b, i, h * 4:(h + 1) * 4, None, None] * kp[b, h * 4:(h + 1) * 4]).sum(0) / 2
                                  for h in range(4)])
            scores = scores.masked_fill(mask[b], float("-inf"))
            expected = scores.flatten().softmax(0).view(4, 5, 6)
            torch.testing.assert_close(weights[b, i], expected, rtol=1e-5, atol=1e-6)
    assert (weights[1][..., 4:] == 0).all()


def test_official_panoptic_names_and_shapes():
    """The official DETR-R50 panoptic head (models/segmentation.py of facebookresearch/detr): hidden 256 + 8 heads =
    264 input channels, widths 256/2^k, FPN adapters from layer3/2/1 (1024/512/256 channels), 251 classes."""
    model = hubconf.detr_resnet50_panoptic(pretrained=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "detr.class_embed.weight": (251, 256), "detr.query_embed.weight": (100, 256),
        "bbox_attention.q_linear.weight": (256, 256), "bbox_attention.k_linear.bias": (256,),
        "mask_head.lay1.weight": (264, 264, 3, 3), "mask_head.gn1.weight": (264,),
        "mask_head.lay2.weight": (128, 264, 3, 3), "mask_head.lay3.weight": (64, 128, 3, 3),
        "mask_head.lay4.weight": (32, 64, 3, 3), "mask_head.lay5.weight": (16, 32, 3, 3),
        "mask_head.gn5.bias": (16,), "mask_head.out_lay.weight": (1, 16, 3, 3),
        "mask_head.adapter1.weight": (128, 1024, 1, 1), "mask_head.adapter2.weight": (64, 512, 1, 1),
        "mask_head.adapter3.weight": (32, 256, 1, 1), "detr.backbone.0.body.layer1.0.conv1.weight": (64, 64, 1, 1),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    head_keys = {k for k in shapes if k.startswith("mask_head.")}
    assert head_keys == {f"mask_head.{n}.{p}" for n in ["lay1", "lay2", "lay3", "lay4", "lay5", "gn1", "gn2", "gn3",
                                                         "gn4", "gn5", "out_lay", "adapter1", "adapter2", "adapter3"]
                         for p in ("weight", "bias")}
    # the box model inside is the official detector: same keys as hubconf.detr_resnet50 under "detr."
    box_keys = {f"detr.{k}" for k in hubconf.detr_resnet50(pretrained=False).state_dict()}
    assert {k for k in shapes if k.startswith("detr.")} == box_keys


def test_hub_panoptic_postprocessor_and_weight_check():
    model, post = hubconf.detr_resnet101_panoptic(pretrained=False, threshold=0.7, return_postprocessor=True)
    assert isinstance(model, DETRsegm) and isinstance(post, PostProcessPanoptic)
    assert post.threshold == 0.7 and post.is_thing_map[90] and not post.is_thing_map[91]
    with pytest.raises(ValueError, match="250 classes"):
        hubconf.detr_resnet50_dc5_panoptic(pretrained=True, num_classes=20)


def test_mask_head_width_error():
    with pytest.raises(ValueError, match="divisible by 8"):
        MaskHeadSmallConv(32 + 8, [1024, 512, 256], 32)


def test_segm_model_keeps_detr_outputs_and_predicts_stride4_masks():
    torch.manual_seed(0)
    model, _, _ = build_model(tiny_segm_args())
    model.eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    with torch.no_grad():
        out = model(images)
        box_out = model.detr(images)
    assert out["pred_masks"].shape == (2, 5, 16, 20)
    torch.testing.assert_close(out["pred_logits"], box_out["pred_logits"])
    torch.testing.assert_close(out["pred_boxes"], box_out["pred_boxes"])


def test_frozen_detr_stays_fixed_while_the_mask_head_learns():
    torch.manual_seed(0)
    args = tiny_segm_args("--frozen_weights", "unused.pth")
    model, criterion, _ = build_model(args)
    detr_before = {k: v.clone() for k, v in model.detr.state_dict().items()}  # includes BatchNorm statistics
    model.train()
    assert not model.detr.training and model.mask_head.training
    assert all(not p.requires_grad for p in model.detr.parameters())
    groups = build_param_groups(model, lr_backbone=1e-5)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad]) > 0
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    masks = [torch.zeros(1, 64, 64, dtype=torch.bool), torch.zeros(2, 64, 48, dtype=torch.bool)]
    masks[0][0, 10:30, 10:40] = True
    masks[1][0, :20, :20] = True
    masks[1][1, 40:, 20:] = True
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.39, 0.31, 0.47, 0.31]]), "masks": masks[0]},
               {"labels": torch.tensor([2, 3]), "boxes": torch.tensor([[0.2, 0.16, 0.4, 0.31], [0.7, 0.8, 0.6, 0.4]]),
                "masks": masks[1]}]
    losses = criterion(model(images), targets)
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    total.backward()
    optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mask_head.parameters())
    for k, v in model.detr.state_dict().items():
        torch.testing.assert_close(v, detr_before[k], msg=k)


def test_loss_masks_hand_computed():
    """One image, one target, one query matched: loss_mask / loss_dice of the upsampled prediction by hand."""
    criterion = SetCriterion(3, HungarianMatcher(), weight_dict={}, eos_coef=0.1, losses=["masks"])
    pred = torch.zeros(1, 2, 2, 2)
    pred[0, 1] = torch.tensor([[4.0, -4.0], [-4.0, -4.0]])
    target = torch.zeros(1, 8, 8)
    target[0, :4, :4] = 1
    outputs = {"pred_masks": pred}
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    losses = criterion.loss_masks(outputs, [{"masks": target}], indices, num_boxes=1)
    up = torch.nn.functional.interpolate(pred[:, 1:2], size=(8, 8), mode="bilinear", align_corners=False).flatten()
    p, t = up.sigmoid(), target.flatten()
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).mean()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert losses["loss_mask"].item() == pytest.approx(focal.item(), rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice.item(), rel=1e-5)


def test_postprocess_segm_crops_the_padding_and_resizes():
    # batch padded to 8x8 input pixels (masks at the same resolution, so no blur); image 1 was 4x8 (h x w) at the
    # model's input and is 8x16 originally
    pred = torch.full((2, 1, 8, 8), -10.0)
    pred[1, 0, :4, 4:] = 10.0  # image 1's right half
    pred[1, 0, 4:, :] = 10.0  # padding below image 1: cropped away
    results = [{"scores": torch.ones(1)}, {"scores": torch.ones(1)}]
    out = PostProcessSegm()(results, {"pred_masks": pred}, torch.tensor([[8, 8], [8, 16]]),
                            torch.tensor([[8, 8], [4, 8]]))
    assert out[0]["masks"].shape == (1, 1, 8, 8) and out[0]["masks"].sum() == 0
    mask = out[1]["masks"][0, 0]
    assert mask.shape == (8, 16) and mask.dtype == torch.uint8
    assert mask[:, 8:].all() and not mask[:, :8].any()


def _decode(prediction) -> np.ndarray:
    return rgb2id(np.asarray(Image.open(io.BytesIO(prediction["png_string"])).convert("RGB")))


def _logits(classes: list[int], num_classes: int = 6, confidence: float = 8.0) -> torch.Tensor:
    """[Q, num_classes + 1] logits whose argmax is ``classes[q]`` (num_classes = no object)."""
    logits = torch.zeros(len(classes), num_classes + 1)
    logits[torch.arange(len(classes)), torch.tensor(classes)] = confidence
    return logits


def test_postprocess_panoptic_merges_stuff_and_fills_pixels():
    is_thing = {1: True, 2: True, 4: False, 5: False}
    # queries: thing 1, stuff 4, stuff 4 again (merged), no-object, thing 2 below the threshold
    logits = _logits([1, 4, 4, 6, 2])
    logits[4] = 0.0
    masks = torch.full((5, 4, 4), -5.0)
    masks[0, :2, :2] = 5  # thing top-left
    masks[1, 2:, :] = 5  # stuff bottom
    masks[2, :2, 2:] = 5  # the same stuff class top-right
    masks[3] = 9  # no-object query: ignored however strong
    out = PostProcessPanoptic(is_thing)({"pred_logits": logits[None], "pred_masks": masks[None]}, [[16, 16]])[0]
    ids = _decode(out)
    info = {s["id"]: s for s in out["segments_info"]}
    assert {s["category_id"] for s in info.values()} == {1, 4}
    thing_id = next(i for i, s in info.items() if s["category_id"] == 1)
    stuff_id = next(i for i, s in info.items() if s["category_id"] == 4)
    assert (ids[:8, :8] == thing_id).all() and (ids[8:, :] == stuff_id).all() and (ids[:8, 8:] == stuff_id).all()
    assert info[thing_id]["isthing"] and not info[stuff_id]["isthing"]
    assert info[thing_id]["area"] == 64 and info[stuff_id]["area"] == 192
    assert sum(s["area"] for s in info.values()) == ids.size


def test_postprocess_panoptic_drops_tiny_segments_and_handles_nothing_kept():
    is_thing = {1: True, 2: True}
    masks = torch.full((2, 8, 8), -5.0)
    masks[0] = 5
    masks[1, 0, 0] = 9  # query 1 wins a single mask cell
    out = PostProcessPanoptic(is_thing)({"pred_logits": _logits([1, 2])[None], "pred_masks": masks[None]},
                                        [[8, 8]])[0]
    # at 8x8 output one mask cell is one pixel: segment 2 has area 1 <= 4 and is dropped, its pixel reassigned
    assert [s["category_id"] for s in out["segments_info"]] == [1]
    assert out["segments_info"][0]["area"] == 64 and (_decode(out) == 0).all()
    nothing = PostProcessPanoptic(is_thing)({"pred_logits": _logits([6, 6])[None], "pred_masks": masks[None]},
                                            [[8, 8]], [[20, 30]])[0]
    assert nothing["segments_info"] == [] and _decode(nothing).shape == (20, 30) and (_decode(nothing) == 0).all()


def test_postprocess_panoptic_aligns_images_smaller_than_the_padded_batch():
    # padded batch of 64x64 input pixels -> 16x16 mask cells; image 1 is 32x32: cells [:8, :8]
    masks = torch.full((2, 2, 16, 16), 10.0)  # padding cells favour query 0 strongly
    masks[1, 0, :8, :4], masks[1, 1, :8, :4] = 10.0, -10.0  # left half of image 1: query 0
    masks[1, 0, :8, 4:8], masks[1, 1, :8, 4:8] = -10.0, 10.0  # right half: query 1
    logits = torch.stack([_logits([1, 2]), _logits([1, 2])])
    out = PostProcessPanoptic({1: True, 2: True})({"pred_logits": logits, "pred_masks": masks},
                                                  [[64, 64], [32, 32]])[1]
    ids = _decode(out)
    assert ids.shape == (32, 32)
    by_cat = {s["category_id"]: s["id"] for s in out["segments_info"]}
    assert (ids[:, :16] == by_cat[1]).all() and (ids[:, 16:] == by_cat[2]).all()
    assert math.isclose(sum(s["area"] for s in out["segments_info"]), 32 * 32)


def test_official_import_paths_keep_working():
    from hubconf import detr_resnet50_panoptic
    from util import box_ops
    from util.misc import NestedTensor, nested_tensor_from_tensor_list

    nested = nested_tensor_from_tensor_list([torch.zeros(3, 4, 5), torch.zeros(3, 2, 6)])
    assert isinstance(nested, NestedTensor) and nested.tensors.shape == (2, 3, 4, 6)
    assert nested.mask[1].sum().item() == 4 * 6 - 2 * 6  # the second image's padding rows
    a, b = torch.tensor([[0.0, 0.0, 2.0, 1.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]])  # inter 1, union 5, hull 6
    assert box_ops.generalized_box_iou(a, b).item() == pytest.approx(1 / 5 - 1 / 6)
    model, postprocessor = detr_resnet50_panoptic(pretrained=False, num_classes=3, return_postprocessor=True)
    assert model.detr.class_embed.out_features == 4 and postprocessor.is_thing_map == {0: True, 1: True, 2: True}


def test_hub_panoptic_example_of_the_official_readme():
    """The official notebook's call: one image, sizes as a [1, 2] tensor, PNG bytes and segments out."""
    torch.manual_seed(0)
    model, postprocessor = hubconf.detr_resnet50_panoptic(pretrained=False, threshold=0.0, return_postprocessor=True)
    model.eval()
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        out = model(image)
    assert out["pred_masks"].shape == (1, 100, 24, 32)
    result = postprocessor(out, torch.as_tensor(image.shape[-2:]).unsqueeze(0))[0]
    ids = _decode(result)
    assert ids.shape == (96, 128)
    assert {int(i) for i in np.unique(ids)} <= {s["id"] for s in result["segments_info"]}
