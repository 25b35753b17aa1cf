"""torch.hub entries of Deformable DETR and DINO: the preset architectures, no network, official weights only from a
file the caller names."""
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
