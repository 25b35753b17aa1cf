"""The official DETR's own test cases (its test_all.py), written anew against this codebase: matcher batching,
TorchScript of the position encodings, backbone and hub models, the inputs a model accepts, ONNX export checked with
onnxruntime; and the official builders' defaults."""
import argparse

import onnxruntime
import pytest
import torch
from torch import Tensor, nn

import cli
import hubconf
from models import build_model
from models.backbone import Backbone
from models.matcher import HungarianMatcher
from models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from util.misc import nested_tensor_from_tensor_list


def _pairs(indices) -> list[tuple[list[int], list[int]]]:
    return [(i.tolist(), j.tolist()) for i, j in indices]


def test_matcher_gives_each_image_of_a_batch_its_own_matching():
    torch.manual_seed(0)
    logits, boxes = torch.rand(1, 100, 92), torch.rand(1, 100, 4)
    targets = [{"labels": torch.randint(91, (15,)), "boxes": torch.rand(15, 4)}]
    matcher = HungarianMatcher()
    single = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
    batched = matcher({"pred_logits": logits.repeat(2, 1, 1), "pred_boxes": boxes.repeat(2, 1, 1)}, targets * 2)
    assert len(single[0][0]) == len(single[0][1]) == 15
    assert _pairs(single) == _pairs(batched[:1]) == _pairs(batched[1:])
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.rand(0, 4)}]
    both = matcher({"pred_logits": logits.repeat(2, 1, 1), "pred_boxes": boxes.repeat(2, 1, 1)}, targets + empty)
    assert _pairs(both[:1]) == _pairs(single) and len(both[1][0]) == 0
    none = matcher({"pred_logits": logits.repeat(2, 1, 1), "pred_boxes": boxes.repeat(2, 1, 1)}, empty * 2)
    assert [len(i) for i, _ in none] == [0, 0]


def test_position_encodings_compile_with_torchscript():
    nested = nested_tensor_from_tensor_list([torch.rand(3, 20, 30), torch.rand(3, 25, 10)])
    for module in (PositionEmbeddingSine(), PositionEmbeddingLearned()):
        scripted = torch.jit.script(module)
        assert torch.equal(scripted(nested), module(nested))


def test_backbone_compiles_with_torchscript():
    # The official call: Backbone(name, train_backbone, return_interm_layers, dilation).
    backbone = Backbone("resnet50", True, False, False)
    assert not any(p.requires_grad for p in backbone.body.layer1.parameters())
    assert all(p.requires_grad for p in backbone.body.layer2.parameters())
    scripted = torch.jit.script(backbone.eval())
    nested = nested_tensor_from_tensor_list([torch.rand(3, 64, 64), torch.rand(3, 48, 80)])
    assert torch.equal(scripted(nested)["0"].tensors, backbone(nested)["0"].tensors)


@pytest.fixture(scope="module")
def detection_model():
    torch.manual_seed(0)
    return hubconf.detr_resnet50(pretrained=False).eval()


def _images() -> list[Tensor]:
    torch.manual_seed(1)
    return [torch.rand(3, 200, 200), torch.rand(3, 200, 250)]


def test_detection_model_compiles_with_torchscript(detection_model):
    scripted = torch.jit.script(detection_model)
    nested = nested_tensor_from_tensor_list(_images())
    with torch.no_grad():
        expected, got = detection_model(nested), scripted(nested)
    assert torch.equal(got["pred_logits"], expected["pred_logits"])
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])


def test_panoptic_model_compiles_with_torchscript():
    torch.manual_seed(0)
    model = hubconf.detr_resnet50_panoptic(pretrained=False).eval()
    scripted = torch.jit.script(model)
    nested = nested_tensor_from_tensor_list(_images())
    with torch.no_grad():
        expected, got = model(nested), scripted(nested)
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        assert torch.equal(got[key], expected[key]), key


def test_a_wrapper_taking_a_list_of_images_compiles_with_torchscript(detection_model):
    class ListInput(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, inputs: list[Tensor]) -> dict[str, Tensor]:
            return self.model(nested_tensor_from_tensor_list(inputs))

    wrapped = ListInput(detection_model).eval()
    scripted = torch.jit.script(wrapped)
    with torch.no_grad():
        expected, got = wrapped(_images()), scripted(_images())
    assert torch.equal(got["pred_logits"], expected["pred_logits"])
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])


def test_detection_model_takes_nested_tensors_batches_and_lists(detection_model):
    images = _images()
    with torch.no_grad():
        nested = detection_model(nested_tensor_from_tensor_list(images))
        as_list = detection_model(images)
        as_batch = detection_model(torch.stack([images[0], images[0]]))
        alone = detection_model([images[0]])
    assert torch.equal(as_list["pred_logits"], nested["pred_logits"])
    assert as_batch["pred_logits"].shape == (2, 100, 92)
    torch.testing.assert_close(as_batch["pred_boxes"][1], alone["pred_boxes"][0])


def test_detection_model_exports_to_onnx_and_runs_in_onnxruntime(detection_model, tmp_path):
    image = torch.rand(1, 3, 160, 192)
    torch.onnx.export(detection_model, (image,), tmp_path / "detr.onnx", input_names=["inputs"],
                      output_names=["pred_logits", "pred_boxes"], opset_version=18, do_constant_folding=True)
    session = onnxruntime.InferenceSession(tmp_path / "detr.onnx")
    logits, boxes = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        expected = detection_model(image)
    torch.testing.assert_close(torch.from_numpy(logits), expected["pred_logits"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(boxes), expected["pred_boxes"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dataset_file, num_classes", [("coco", 91), ("coco_panoptic", 250)])
def test_build_model_from_the_default_flags_uses_the_official_class_count(dataset_file, num_classes):
    args = cli.get_args_parser().parse_args(["--dataset_file", dataset_file, "--no_pretrained_backbone",
                                             "--backbone", "resnet18", "--device", "cpu"])
    model, criterion, postprocessors = build_model(args)
    assert model.class_embed.out_features == num_classes + 1 and criterion.num_classes == num_classes
    assert set(postprocessors) == {"bbox"}


# the official DETR's module paths and public names (its hubconf, notebooks and scripts import these)
OFFICIAL_NAMES = {
    "main": ["get_args_parser", "main"],
    "engine": ["train_one_epoch", "evaluate"],
    "hubconf": ["detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5",
                "detr_resnet50_panoptic", "detr_resnet50_dc5_panoptic", "detr_resnet101_panoptic"],
    "models": ["build_model"],
    "models.detr": ["DETR", "SetCriterion", "PostProcess", "MLP", "build"],
    "models.backbone": ["Backbone", "BackboneBase", "Joiner", "FrozenBatchNorm2d", "build_backbone"],
    "models.position_encoding": ["PositionEmbeddingSine", "PositionEmbeddingLearned", "build_position_encoding"],
    "models.matcher": ["HungarianMatcher", "build_matcher"],
    "models.transformer": ["Transformer", "TransformerEncoder", "TransformerDecoder", "TransformerEncoderLayer",
                           "TransformerDecoderLayer", "build_transformer"],
    "models.segmentation": ["DETRsegm", "MHAttentionMap", "MaskHeadSmallConv", "PostProcessPanoptic",
                            "PostProcessSegm", "dice_loss", "sigmoid_focal_loss"],
    "util.misc": ["NestedTensor", "nested_tensor_from_tensor_list", "collate_fn", "MetricLogger", "SmoothedValue",
                  "all_gather", "get_rank", "get_world_size", "is_main_process", "is_dist_avail_and_initialized"],
    "util.box_ops": ["box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_iou", "generalized_box_iou", "masks_to_boxes"],
    "util.plot_utils": ["plot_logs", "plot_precision_recall"],
    "datasets": ["build_dataset", "get_coco_api_from_dataset"],
    "datasets.coco": ["CocoDetection", "ConvertCocoPolysToMask", "make_coco_transforms", "build"],
    "datasets.coco_panoptic": ["CocoPanoptic", "build"],
    "datasets.transforms": ["Compose", "RandomHorizontalFlip", "RandomResize", "RandomSelect", "RandomSizeCrop",
                            "ToTensor", "Normalize"],
    "datasets.coco_eval": ["CocoEvaluator"],
    "datasets.panoptic_eval": ["PanopticEvaluator"],
}
# the modules that own what an official path re-exports
OWNERS = {"models.transformer": "models.detr.transformer", "models.segmentation": "models.detr.segmentation",
          "datasets.coco_eval": "evaluation.coco_eval", "datasets.panoptic_eval": "evaluation.panoptic_eval"}


@pytest.mark.parametrize("module", sorted(OFFICIAL_NAMES))
def test_official_module_paths_import_with_their_public_names(module):
    import importlib

    imported = importlib.import_module(module)
    missing = [name for name in OFFICIAL_NAMES[module] if not hasattr(imported, name)]
    assert missing == []
    if module in OWNERS:  # a re-export is the owner's object, not a copy
        owner = importlib.import_module(OWNERS[module])
        for name in OFFICIAL_NAMES[module]:
            assert getattr(imported, name) is getattr(owner, name, getattr(imported, name)), name
            assert getattr(imported, name).__module__.startswith(("models.", "evaluation.")), name


def test_official_segmentation_path_builds_a_working_mask_head():
    from models.segmentation import DETRsegm, PostProcessSegm
    from models.transformer import build_transformer

    args = cli.get_args_parser().parse_args(["--backbone", "resnet18", "--no_pretrained_backbone", "--hidden_dim",
                                             "128", "--nheads", "8", "--enc_layers", "1", "--dec_layers", "1",
                                             "--dim_feedforward", "32", "--num_queries", "4", "--masks"])
    transformer = build_transformer(args)
    assert transformer.d_model == 128 and len(transformer.encoder.layers) == 1
    model = build_model(argparse.Namespace(**{**vars(args), "num_classes": 5, "device": "cpu"}))[0]
    assert isinstance(model, DETRsegm)
    with torch.no_grad():
        out = model.eval()(nested_tensor_from_tensor_list([torch.rand(3, 64, 64)]))
    (result,) = PostProcessSegm()([{}], out, torch.tensor([[32, 48]]), torch.tensor([[64, 64]]))
    assert result["masks"].shape == (4, 1, 32, 48) and set(result["masks"].unique().tolist()) <= {0, 1}
