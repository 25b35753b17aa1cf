"""AG-CNN hard-attention heat maps: the map, its thresholded region, the largest connected part and its box on a
hand-made feature map, and the picture the visualisation tool writes."""
import pytest
import torch

from tools.analysis.hard_attention import binary_mask, bounding_box, hard_attention, heat_map, largest_region


def _features() -> torch.Tensor:
    """``[1, 3, 4, 5]``: |f| peaks of 9 (0, 0), 8 (1, 1), 7.5 (1, 2), 7.2 (2, 2), 10 (3, 4), 3 (0, 4), as (row,
    column); negative values count by their magnitude."""
    f = torch.zeros(1, 3, 4, 5)
    f[0, 0, 0, 0] = -9.0
    f[0, 1, 1, 1], f[0, 1, 1, 2], f[0, 1, 3, 4] = 8.0, -7.5, 10.0
    f[0, 2, 2, 2], f[0, 2, 0, 4] = 7.2, 3.0
    f[0, 2, 1, 1] = -2.0  # smaller than channel 1's 8 at the same pixel: the max over channels keeps 8
    return f


def test_heat_map_is_max_over_channels_of_absolute_values():
    expected = torch.zeros(4, 5)
    for (y, x), value in {(0, 0): 9.0, (1, 1): 8.0, (1, 2): 7.5, (2, 2): 7.2, (3, 4): 10.0, (0, 4): 3.0}.items():
        expected[y, x] = value
    assert torch.equal(heat_map(_features())[0], expected)


def test_region_threshold_is_relative_to_the_maximum_and_keeps_the_largest_8_connected_part():
    heat = heat_map(_features())[0]
    binary = binary_mask(heat, tau=0.7)  # > 7: 9, 8, 7.5, 7.2 (one 8-connected part) and 10 (alone)
    assert binary.sum() == 5 and not binary[0, 4]
    region = largest_region(binary)
    assert region.sum() == 4 and not region[3, 4]  # (0, 0) joins (1, 1) diagonally
    assert bounding_box(region) == (0, 0, 2, 2)  # x_min, y_min, x_max, y_max
    assert torch.equal(binary_mask(heat * 5, tau=0.7), binary)  # scale-free: tau is relative to the maximum
    tight = hard_attention(_features(), tau=0.85)[0]  # > 8.5: 9 and 10, two single cells: the first in raster order
    assert tight.region.sum() == 1 and tight.box == (0, 0, 0, 0)


def test_padding_takes_no_part():
    mask = torch.zeros(1, 4, 5, dtype=torch.bool)
    mask[0, :, 4] = True  # the column with the 10 is padding: the maximum is 9 and the region the upper-left part
    found = hard_attention(_features(), mask, tau=0.7)[0]
    assert found.heat[:, 4].eq(0).all() and found.box == (0, 0, 2, 2) and found.binary.sum() == 4


def test_empty_maps_and_bad_tau():
    found = hard_attention(torch.zeros(1, 2, 3, 3))[0]
    assert not found.binary.any() and found.box is None
    with pytest.raises(ValueError, match="--tau"):
        binary_mask(torch.ones(2, 2), tau=1.5)


def test_tool_draws_hard_attention_next_to_block_maps(tiny_coco, tmp_path):
    """Any model: here with aa blocks on layer4's 3x3 convolutions (their maps need the convolution's input) and
    the heat map of layer3."""
    pytest.importorskip("matplotlib")
    from tools.analysis import visualize_attention

    image = sorted((tiny_coco / "val2017").iterdir())[0]
    flags = ["--backbone", "resnet18", "--no_pretrained_backbone", "--hidden_dim", "32", "--nheads", "2",
             "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32", "--num_queries", "4",
             "--image_size", "64", "--image", str(image), "--out", str(tmp_path), "--threshold", "0"]
    written = visualize_attention.main([*flags, "--backbone_attn", "aa", "--heatmap_layer", "layer3"])
    assert sorted(p.name for p in written) == ["attn_layer4_0.png", "attn_layer4_1.png", "decoder_attention.png",
                                               "detections.png", "hard_attention.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    with pytest.raises(ValueError, match="--heatmap_layer"):
        visualize_attention.main([*flags, "--feature_layer", "layer3", "--heatmap_layer", "layer4"])
