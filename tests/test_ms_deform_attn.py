"""Multi-scale deformable attention against a slow, direct bilinear interpolation written out point by point."""
import math

import pytest
import torch

from models.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn_core

pytestmark = pytest.mark.usefixtures("one_thread")


SHAPES = [(3, 4), (2, 3)]  # (H, W) per level; 12 + 6 values


def _levels(shapes):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), spatial_shapes.prod(1).cumsum(0)[:-1]])
    return spatial_shapes, starts


def slow_core(value, shapes, locations, weights):
    """Per batch, query, head, level and point: the four neighbouring pixel centres of (x W - 0.5, y H - 0.5), each
    weighted by its bilinear weight, pixels outside the map counting as zero."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [sum(h * w for h, w in shapes[:i]) for i in range(len(shapes))]
    rows = []
    for b in range(batch):
        for q in range(queries):
            per_head = []
            for m in range(heads):
                acc = value.new_zeros(head_dim)
                for lvl, (height, width) in enumerate(shapes):
                    for p in range(points):
                        x = locations[b, q, m, lvl, p, 0] * width - 0.5
                        y = locations[b, q, m, lvl, p, 1] * height - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        for yi, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                            for xi, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                                if 0 <= xi < width and 0 <= yi < height:
                                    pixel = value[b, starts[lvl] + yi * width + xi, m]
                                    acc = acc + weights[b, q, m, lvl, p] * wy * wx * pixel
                per_head.append(acc)
            rows.append(torch.cat(per_head))
    return torch.stack(rows).view(batch, queries, heads * head_dim)


def _random_inputs(seed, low=-0.3, high=1.3, batch=2, queries=3, heads=2, head_dim=3, points=2):
    g = torch.Generator().manual_seed(seed)
    num_values = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, num_values, heads, head_dim, generator=g, dtype=torch.float64)
    locations = low + (high - low) * torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g,
                                                dtype=torch.float64)
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g, dtype=torch.float64)
    return value, locations, weights


def test_core_matches_slow_bilinear_sampling_inside_and_outside_the_maps():
    value, locations, weights = _random_inputs(0)
    assert (locations < 0).any() and (locations > 1).any()  # some points fall outside the maps
    shapes, starts = _levels(SHAPES)
    torch.testing.assert_close(ms_deform_attn_core(value, shapes, starts, locations, weights),
                               slow_core(value, SHAPES, locations, weights), rtol=1e-12, atol=1e-12)


def test_core_on_cell_centres_edges_and_borders():
    """Exact positions: map borders (0, 1), cell centres (value read as is), midpoints between centres, the last
    cell of level 0 and the first of level 1 (where the flattened levels meet), and a point half a cell outside."""
    value, _, weights = _random_inputs(1, queries=1, heads=1, points=8)
    xs = [0.0, 1.0, 0.5 / 4, 1 / 4, 3.5 / 4, 0.5, -0.5 / 4, 2 / 4]
    ys = [0.0, 1.0, 0.5 / 3, 1 / 3, 2.5 / 3, 0.5, 0.5 / 3, 1.5]
    locations = torch.tensor([xs, ys], dtype=torch.float64).T  # [P, 2] on level 0
    locations = torch.stack([locations, locations.flip(0)], 0)  # level 1 reads them in the other order
    locations = locations[None, None, None].expand(2, 1, 1, 2, 8, 2).contiguous()
    shapes, starts = _levels(SHAPES)
    actual = ms_deform_attn_core(value, shapes, starts, locations, weights)
    torch.testing.assert_close(actual, slow_core(value, SHAPES, locations, weights), rtol=1e-12, atol=1e-12)
    # a point on a cell centre reads that value exactly: the last cell of level 0, the first of level 1
    one_hot = torch.zeros_like(weights)
    one_hot[:, :, :, 0, 4] = 1  # (3.5/4, 2.5/3): row 2, column 3, the last value of level 0
    centre = ms_deform_attn_core(value, shapes, starts, locations, one_hot)
    torch.testing.assert_close(centre, value[:, None, 11, 0], rtol=0, atol=1e-12)
    first = locations.clone()
    first[:, :, :, 1, 0] = torch.tensor([0.5 / 3, 0.5 / 2], dtype=torch.float64)
    one_hot = torch.zeros_like(weights)
    one_hot[:, :, :, 1, 0] = 1
    torch.testing.assert_close(ms_deform_attn_core(value, shapes, starts, first, one_hot), value[:, None, 12, 0],
                               rtol=0, atol=1e-12)


def test_core_gradients_match_the_slow_reference():
    value, locations, weights = _random_inputs(2)
    shapes, starts = _levels(SHAPES)
    upstream = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = []
    for fn in (lambda v, loc, w: ms_deform_attn_core(v, shapes, starts, loc, w),
               lambda v, loc, w: slow_core(v, SHAPES, loc, w)):
        inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
        (fn(*inputs) * upstream).sum().backward()
        grads.append([t.grad for t in inputs])
    for name, ours, slow in zip(("value", "sampling_locations", "attention_weights"), *grads):
        torch.testing.assert_close(ours, slow, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_core_passes_gradcheck():
    value, locations, weights = _random_inputs(3, batch=1, queries=2, heads=1, head_dim=2, points=2)
    shapes, starts = _levels(SHAPES)
    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn_core(v, shapes, starts, loc, w), inputs)


def _module(seed=0, d_model=8, heads=2, points=2):
    torch.manual_seed(seed)
    attn = MSDeformAttn(d_model=d_model, n_levels=len(SHAPES), n_heads=heads, n_points=points).double()
    with torch.no_grad():  # leave the initial state: random offsets and attention weights
        for p in attn.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return attn


def test_module_with_padding_mask_is_the_slow_computation_on_zeroed_values():
    attn = _module()
    g = torch.Generator().manual_seed(4)
    num_values = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    features = torch.randn(2, num_values, 8, generator=g, dtype=torch.float64)
    reference = torch.rand(2, 3, len(SHAPES), 2, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, num_values, dtype=torch.bool)
    mask[1, [3, 7, 11, 14, 17]] = True  # the second image is padded on the right in both levels
    shapes, starts = _levels(SHAPES)
    actual = attn(query, reference, features, shapes, starts, mask)

    value = attn.value_proj(features).masked_fill(mask[..., None], 0).view(2, num_values, 2, 4)
    offsets = attn.sampling_offsets(query).view(2, 3, 2, len(SHAPES), 2, 2)
    normalizer = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64)
    locations = reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    weights = attn.attention_weights(query).view(2, 3, 2, -1).softmax(-1).view(2, 3, 2, len(SHAPES), 2)
    expected = attn.output_proj(slow_core(value, SHAPES, locations, weights))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    # the level sizes as a list of pairs give the same numbers
    torch.testing.assert_close(attn(query, reference, features, SHAPES, starts, mask), actual, rtol=0, atol=0)
    # features under the padding do not matter
    changed = features.clone()
    changed[mask] = 100.0
    torch.testing.assert_close(attn(query, reference, changed, shapes, starts, mask), actual, rtol=0, atol=1e-12)


def test_box_references_scale_offsets_by_half_the_box_over_the_points():
    """A box of size (2P / W_l, 2P / H_l) on level l moves a point by exactly as many cells as the point form."""
    attn = _module(points=2)
    g = torch.Generator().manual_seed(6)
    num_values = sum(h * w for h, w in SHAPES)
    query = torch.randn(1, 4, 8, generator=g, dtype=torch.float64)
    features = torch.randn(1, num_values, 8, generator=g, dtype=torch.float64)
    centres = torch.rand(1, 4, len(SHAPES), 2, generator=g, dtype=torch.float64)
    sizes = torch.tensor([[2 * 2 / w, 2 * 2 / h] for h, w in SHAPES], dtype=torch.float64).expand(1, 4, -1, -1)
    shapes, starts = _levels(SHAPES)
    torch.testing.assert_close(attn(query, torch.cat([centres, sizes], -1), features, shapes, starts),
                               attn(query, centres, features, shapes, starts), rtol=1e-12, atol=1e-12)


def test_initial_offsets_point_in_each_heads_direction_and_attention_is_uniform():
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=8, n_points=4)
    directions = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]],
                              dtype=torch.float32)
    expected = directions[:, None, None, :] * torch.arange(1, 5, dtype=torch.float32)[None, None, :, None]
    expected = expected.expand(8, 3, 4, 2).reshape(-1)
    torch.testing.assert_close(attn.sampling_offsets.bias.detach(), expected, rtol=1e-6, atol=1e-6)
    assert not attn.sampling_offsets.weight.any()
    assert not attn.attention_weights.weight.any() and not attn.attention_weights.bias.any()
    assert not attn.value_proj.bias.any() and not attn.output_proj.bias.any()
    bound = math.sqrt(6 / (16 + 16))  # xavier uniform
    assert attn.value_proj.weight.abs().max() <= bound and attn.output_proj.weight.abs().max() <= bound
    assert attn.value_proj.weight.std() > bound / 4


def test_module_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2)
    shapes, starts = _levels(SHAPES)
    query, features = torch.randn(1, 3, 8), torch.randn(1, 18, 8)
    with pytest.raises(ValueError, match="end in 2"):
        attn(query, torch.rand(1, 3, 2, 3), features, shapes, starts)
    with pytest.raises(ValueError, match="add up"):
        attn(query, torch.rand(1, 3, 2, 2), torch.randn(1, 17, 8), shapes, starts)


def test_module_exports_with_a_dynamic_batch_and_query_count():
    """torch.export with the level sizes as Python integers: no loop over the batch, no data-dependent size."""
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2).eval()
    _, starts = _levels(SHAPES)

    class WithLevels(torch.nn.Module):
        def forward(self, query, reference, features, mask):
            return attn(query, reference, features, SHAPES, starts, mask)

    inputs = (torch.randn(3, 5, 8), torch.rand(3, 5, 2, 2), torch.randn(3, 18, 8), torch.zeros(3, 18, dtype=torch.bool))
    batch, queries = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("queries", min=1, max=1000)
    exported = torch.export.export(WithLevels(), inputs, dynamic_shapes=(
        {0: batch, 1: queries}, {0: batch, 1: queries}, {0: batch}, {0: batch})).module()
    other = (torch.randn(4, 7, 8), torch.rand(4, 7, 2, 2), torch.randn(4, 18, 8), torch.rand(4, 18) > 0.7)
    torch.testing.assert_close(exported(*other), WithLevels()(*other))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_core_on_gpu_matches_cpu():
    value, locations, weights = _random_inputs(7)
    shapes, starts = _levels(SHAPES)
    cpu = [t.clone().requires_grad_() for t in (value, locations, weights)]
    gpu = [t.cuda().requires_grad_() for t in (value, locations, weights)]
    out_cpu = ms_deform_attn_core(cpu[0], shapes, starts, cpu[1], cpu[2])
    out_gpu = ms_deform_attn_core(gpu[0], shapes.cuda(), starts.cuda(), gpu[1], gpu[2])
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-10, atol=1e-10)
    out_cpu.sum().backward()
    out_gpu.sum().backward()
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.grad.cpu(), c.grad, rtol=1e-9, atol=1e-9)
