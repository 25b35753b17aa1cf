"""torch.hub entries of Deformable DETR, DINO, RT-DETRv2 and D-FINE: the preset architectures, no network in
tests; official weights from a file the caller names or the release URL (its download replaced in tests)."""
import pytest
import torch

import hubconf


@pytest.mark.parametrize("name", sorted(hubconf.PRESET_MODELS))
def test_entry_builds_the_preset_architecture_without_network(name):
    model, postprocessor = getattr(hubconf, name)(num_classes=12, return_postprocessor=True)
    head = model.class_embed[0] if isinstance(model.class_embed, torch.nn.ModuleList) else model.class_embed
    assert head.out_features == 12  # sigmoid classifiers: one output per class, no "no object"
    logits = torch.zeros(1, 3, 12)
    logits[0, 1, 7] = 5.0
    outputs = {"pred_logits": logits, "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 3])}
    (result,) = postprocessor(outputs, torch.tensor([[100, 200]]))
    assert result["labels"][0].item() == 7 and result["scores"][0].item() == pytest.approx(torch.sigmoid(
        torch.tensor(5.0)).item())
    torch.testing.assert_close(result["boxes"][0], torch.tensor([80.0, 40.0, 120.0, 60.0]))
    with pytest.raises(ValueError, match="drive.google.com.*checkpoint=PATH"):
        getattr(hubconf, name)(pretrained=True)


def test_official_weights_load_from_the_named_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = hubconf.deformable_detr_resnet50_single_scale()
    torch.save({"model": source.state_dict(), "epoch": 49}, tmp_path / "official.pth")
    torch.manual_seed(1)
    loaded = hubconf.deformable_detr_resnet50_single_scale(pretrained=True, checkpoint=str(tmp_path / "official.pth"))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("name", sorted(hubconf.RTDETRV2_MODELS))
def test_rtdetrv2_entries_load_the_release_files_ema_weights_strictly(name, monkeypatch):
    """pretrained=True: the release URL's file ({"ema": {"module": ...}}, as released) loaded strictly; the
    post-processor gives COCO category ids and takes (w, h) sizes, as the official one (no network: the download is
    replaced by a file of that format made from another model of the same preset)."""
    torch.manual_seed(0)
    with torch.device("meta") if name != "rtdetrv2_r18vd" else torch.device("cpu"):
        source = getattr(hubconf, name)()
    if name != "rtdetrv2_r18vd":  # the larger presets: names and shapes only (meta tensors, no memory)
        assert source.decoder.dec_score_head[0].out_features == 80
        return
    release = {"ema": {"module": source.state_dict(), "updates": 1000}, "date": "2024-07-24"}
    asked = []
    monkeypatch.setattr(hubconf, "load_checkpoint", lambda url, flag: asked.append(url) or release)
    torch.manual_seed(1)
    model, postprocessor = hubconf.rtdetrv2_r18vd(pretrained=True, return_postprocessor=True)
    assert asked == [hubconf.RTDETRV2_MODELS[name][2]]
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    logits = torch.full((1, 4, 80), -9.0)
    logits[0, 2, 11] = 3.0  # label 11 is COCO category 13 (12 is not a COCO category)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 4])
    result = postprocessor({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[200, 100]]))[0]  # (w, h)
    assert result["labels"][0].item() == 13
    torch.testing.assert_close(result["boxes"][0], torch.tensor([80.0, 40.0, 120.0, 60.0]))
    with pytest.raises(ValueError, match="80 classes"):
        hubconf.rtdetrv2_r18vd(pretrained=True, num_classes=3)


@pytest.mark.parametrize("name", sorted(hubconf.DFINE_MODELS))
def test_dfine_entries_load_the_release_files_strictly(name, monkeypatch):
    """pretrained=True: the release URL's file loaded strictly, its EMA weights where it has them, else its model
    weights (as the official evaluation); COCO category ids and (w, h) sizes from the post-processor. No network:
    the download is replaced by files of both formats made from another model of the same preset."""
    torch.manual_seed(0)
    with torch.device("meta") if name != "dfine_n" else torch.device("cpu"):
        source = getattr(hubconf, name)()
    if name != "dfine_n":  # the larger presets: names and shapes only (meta tensors, no memory)
        assert source.decoder.dec_score_head[0].out_features == 80
        return
    zeros = {key: torch.zeros_like(value) for key, value in source.state_dict().items()}
    asked = []
    for release in ({"model": source.state_dict()}, {"model": zeros, "ema": {"module": source.state_dict()}}):
        asked.clear()
        monkeypatch.setattr(hubconf, "load_checkpoint", lambda url, flag, release=release: asked.append(url) or release)
        torch.manual_seed(1)
        model, postprocessor = hubconf.dfine_n(pretrained=True, return_postprocessor=True)
        assert asked == ["https://github.com/Peterande/storage/releases/download/dfinev1.0/dfine_n_coco.pth"]
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
    logits = torch.full((1, 4, 80), -9.0)
    logits[0, 1, 79] = 3.0  # label 79 is COCO category 90
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 4])
    result = postprocessor({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[200, 100]]))[0]  # (w, h)
    assert result["labels"][0].item() == 90
    torch.testing.assert_close(result["boxes"][0], torch.tensor([80.0, 40.0, 120.0, 60.0]))
    with pytest.raises(ValueError, match="80 classes"):
        hubconf.dfine_n(pretrained=True, num_classes=3)
