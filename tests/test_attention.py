"""models/attention: shapes, identity at init, padding-awareness, masked pooling, gradients, parameter counts,
equivalence with timm (se, eca, cbam, gc, nl) and with transcriptions of the authors' code (ca, cc, da), for every
registered block; the papers' definitions of aa, sasa, ran and stn are checked in test_attention_<name>.py."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.attention import ATTENTION, SUPPORTED_POSITIONS, build_attention, default_position, supported_positions
from models.attention.eca import eca_kernel_size
from models.attention.masked_ops import masked_max, masked_mean, masked_softmax
from tests.attention_inputs import C, padded_batch, perturb

NAMES = list(ATTENTION)
GATE_BLOCKS = ("se", "eca", "ca", "cbam")
SIZES = ((4, 5), (6, 7))  # the first image is padded in both directions when batched with the second

# Biases that add the same constant to every logit of a softmax, so their gradient is zero in exact arithmetic.
SHIFT_INVARIANT = {"gc": {"conv_attn.bias"}, "nl": {"phi.bias"}, "cc": {"cca.key.bias"}, "da": {"key.bias"}}


@pytest.mark.parametrize("name", NAMES)
def test_shape_mixed_sizes(name):
    _, x, mask = padded_batch(SIZES)
    block = perturb(build_attention(name, C))
    y = block(x, mask)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()  # padded pixels included
    assert block(x).shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_identity_at_init(name):
    _, x, mask = padded_batch(SIZES)
    block = build_attention(name, C)
    for train in (True, False):
        block.train(train)
        assert torch.equal(block(x, mask), x)
        assert torch.equal(block(x), x)
    perturb(block).reset_parameters()
    assert torch.equal(block(x, mask), x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_output_keeps_memory_layout(name, memory_format):
    """Same strides as the input, so that the rest of a pretrained network sums in the same order (bitwise)."""
    _, x, mask = padded_batch(SIZES)
    x = x.contiguous(memory_format=memory_format)
    block = perturb(build_attention(name, C))
    assert block(x, mask).stride() == x.stride()
    assert block(x).stride() == x.stride()


@pytest.mark.parametrize("name", NAMES)
def test_padding_does_not_change_valid_outputs(name):
    """An image's output on its valid pixels is the same alone (mask None or all False) and padded into a batch."""
    images, x, mask = padded_batch(SIZES, dtype=torch.float64)
    block = perturb(build_attention(name, C)).double()
    y = block(x, mask)
    assert torch.isfinite(y).all()
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        alone = block(image)
        assert not torch.allclose(alone, image)  # the block does something
        torch.testing.assert_close(block(image, torch.zeros(1, h, w, dtype=torch.bool)), alone, rtol=0, atol=1e-10)
        torch.testing.assert_close(y[i:i + 1, :, :h, :w], alone, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_padding_float32(name):
    images, x, mask = padded_batch(SIZES)
    block = perturb(build_attention(name, C))
    y = block(x, mask)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        # float32 sums in a different order (batch vs single image, thread scheduling) differ by ~1e-5; garbage
        # leaking in from the padding (values ~50) would differ by orders of magnitude more
        torch.testing.assert_close(y[i:i + 1, :, :h, :w], block(image), rtol=1e-4, atol=1e-4)


def test_masked_pooling_helpers():
    x = torch.randn(2, 3, 4, 5)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, 2:] = True
    mask[0, :, 3:] = True
    x[0][:, mask[0]] = 1e6  # garbage on padding: must not reach any result
    valid = x[0, :, :2, :3]

    torch.testing.assert_close(masked_mean(x, mask)[0, :, 0, 0], valid.mean((1, 2)))
    torch.testing.assert_close(masked_max(x, mask)[0, :, 0, 0], valid.amax((1, 2)))
    torch.testing.assert_close(masked_mean(x, mask)[1], x[1].mean((1, 2), keepdim=True))
    torch.testing.assert_close(masked_max(x, mask)[1], x[1].amax((1, 2), keepdim=True))
    assert torch.equal(masked_mean(x, None), x.mean((2, 3), keepdim=True))

    rows = masked_mean(x, mask, dims=(3,))  # [B, C, H, 1]
    assert rows.shape == (2, 3, 4, 1)
    torch.testing.assert_close(rows[0, :, :2, 0], valid.mean(2))
    assert torch.equal(rows[0, :, 2:], torch.zeros(3, 2, 1))  # fully padded rows: 0
    cols = masked_max(x, mask, dims=(2,))  # [B, C, 1, W]
    torch.testing.assert_close(cols[0, :, 0, :3], valid.amax(1))
    assert torch.equal(cols[0, :, 0, 3:], torch.zeros(3, 2))  # fully padded columns: 0, not -inf

    logits = torch.tensor([[1.0, 2.0, 100.0, 3.0], [5.0, 6.0, 7.0, 8.0]])
    keys = torch.tensor([[False, False, True, False], [True, True, True, True]])
    probs = masked_softmax(logits, keys)
    torch.testing.assert_close(probs[0, [0, 1, 3]], torch.tensor([1.0, 2.0, 3.0]).softmax(0))
    assert probs[0, 2] == 0
    assert torch.equal(probs[1], torch.zeros(4))  # no valid key: zeros, not NaN


@pytest.mark.parametrize("name", NAMES)
def test_gradients_and_one_step(name):
    """At init every parameter gets a gradient (zero where gamma = 0 blocks it) and one step moves the output;
    away from identity every parameter gets a nonzero gradient, except biases under a softmax (shift-invariant)."""
    torch.manual_seed(0)
    _, x, mask = padded_batch(SIZES)
    target = torch.randn_like(x)
    block = build_attention(name, C)
    loss = F.mse_loss(block(x, mask), target)
    loss.backward()
    assert all(p.grad is not None for p in block.parameters())
    torch.optim.SGD(block.parameters(), lr=1.0).step()
    with torch.no_grad():
        assert not torch.equal(block(x, mask), x)

    block = perturb(build_attention(name, C)).double()  # float64: shift-invariant gradients are ~1e-16, not ~1e-5
    F.mse_loss(block(x.double(), mask), target.double()).backward()
    for pname, p in block.named_parameters():
        assert torch.isfinite(p.grad).all(), pname
        if pname in SHIFT_INVARIANT.get(name, ()):
            assert p.grad.abs().max() < 1e-10, pname
        else:
            assert p.grad.abs().max() > 0, pname


def test_parameter_counts():
    channels = 256
    # GCNet, r = 16: attention conv C->1 with bias, fc1 C->C/r with bias, LayerNorm over C/r, fc2 C/r->C with bias.
    rd = channels // 16
    expected_gc = (channels + 1) + (channels * rd + rd) + 2 * rd + (rd * channels + channels)
    assert expected_gc == 8753
    assert sum(p.numel() for p in build_attention("gc", channels).parameters()) == expected_gc
    # Coordinate attention: mip = max(8, C // 32); conv1 C->mip, norm over mip, conv_h and conv_w mip->C, all biased.
    mip = max(8, channels // 32)
    expected_ca = (channels * mip + mip) + 2 * mip + 2 * (mip * channels + channels)
    assert expected_ca == 6680
    ca = build_attention("ca", channels)
    assert sum(p.numel() for p in ca.attn.parameters()) == expected_ca
    assert sum(p.numel() for p in ca.parameters()) == expected_ca + 1  # + the gate's gamma


def test_eca_kernel_size():
    assert [eca_kernel_size(c) for c in (64, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 7]
    assert build_attention("eca", 256).attn.conv.kernel_size == (5,)


@pytest.mark.parametrize("name", NAMES)
def test_no_batchnorm_and_weight_decay_rule(name):
    """No BatchNorm; gammas are 0-dim and norm parameters 1-D, so "ndim <= 1: no weight decay" covers them."""
    block = build_attention(name, C)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules())
    for m in block.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            assert all(p.ndim == 1 for p in m.parameters())
    gammas = [n for n, p in block.named_parameters() if p.ndim == 0]
    assert len(gammas) == {"gc": 0, "nl": 0, "da": 2, "aa": 0, "sasa": 0, "stn": 0}.get(name, 1)
    assert all(n.rsplit(".", 1)[-1].startswith("gamma") for n in gammas)


def test_positions():
    for name in NAMES:
        assert default_position(name) in supported_positions(name) == SUPPORTED_POSITIONS[name]
    for name in (*GATE_BLOCKS, "gc"):
        assert supported_positions(name) == ("block", "stage") and default_position(name) == "block"
    for name in ("nl", "cc", "da", "ran", "stn"):
        assert supported_positions(name) == ("stage",) and default_position(name) == "stage"
    for name in ("aa", "sasa"):  # on the 3x3 convolution inside residual blocks, or on stage outputs
        assert supported_positions(name) == ("block", "stage") and default_position(name) == "block"
        assert ATTENTION[name].augments_conv
    assert not any(ATTENTION[name].augments_conv for name in NAMES if name not in ("aa", "sasa"))


def test_unknown_name():
    with pytest.raises(ValueError, match="choices: gc, ca, se, eca, cbam, nl, cc, da, aa, sasa, ran, stn"):
        build_attention("sk", 64)
    with pytest.raises(ValueError, match="choices"):
        default_position("nope")


def test_bad_mask():
    block = build_attention("gc", C)
    x = torch.randn(1, C, 4, 4)
    with pytest.raises(ValueError, match="mask"):
        block(x, torch.zeros(1, 2, 2, dtype=torch.bool))


# ---- equivalence with timm (no padding) ----

CT = 64


def _timm_check(block, reference, atol=1e-5):
    x = torch.randn(2, CT, 7, 9)
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(x), rtol=1e-5, atol=atol)


def _identity_bn(bn: nn.BatchNorm2d, bias: torch.Tensor | None = None) -> None:
    """Make an eval-mode BatchNorm the identity (plus ``bias``): (y - 0) / sqrt(1 - eps + eps) * 1 + bias."""
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1 - bn.eps)
        bn.weight.fill_(1)
        bn.bias.copy_(bias if bias is not None else torch.zeros_like(bn.bias))


def test_timm_se():
    """timm SEModule = our SE at gamma = 1 with the same 1x1-conv layout (fc1/fc2 with bias); timm rounds the
    reduced width to a multiple of 8, so it is passed explicitly."""
    timm_layers = pytest.importorskip("timm.layers")
    block = perturb(build_attention("se", CT))
    ref = timm_layers.SEModule(CT, rd_channels=block.attn.fc1.out_channels)
    ref.load_state_dict(block.attn.state_dict())
    _timm_check(block, ref)


def test_timm_eca():
    """timm EcaModule has the same kernel size for C >= 16 (it raises it to at least 3) and the same bias-free conv."""
    timm_layers = pytest.importorskip("timm.layers")
    block = perturb(build_attention("eca", CT))
    ref = timm_layers.EcaModule(CT)
    assert ref.conv.kernel_size == block.attn.conv.kernel_size
    ref.load_state_dict(block.attn.state_dict())
    _timm_check(block, ref)


def test_timm_cbam():
    """timm CbamModule: same channel MLP (bias-free, avg + max) and spatial [mean; max] 7x7 conv, but its conv is
    followed by BatchNorm2d(1) where ours has a bias: set timm's BN (eval) to the identity plus our bias."""
    timm_cbam = pytest.importorskip("timm.layers.cbam")
    block = perturb(build_attention("cbam", CT))
    ref = timm_cbam.CbamModule(CT, rd_channels=block.attn.channel.fc1.out_channels)
    ref.channel.load_state_dict(block.attn.channel.state_dict())
    with torch.no_grad():
        ref.spatial.conv.conv.weight.copy_(block.attn.spatial.conv.weight)
    _identity_bn(ref.spatial.conv.bn, block.attn.spatial.conv.bias)
    _timm_check(block, ref)


def test_timm_global_context():
    """timm GlobalContext(fuse_add=True, fuse_scale=False) has our layout and names; its LayerNorm2d uses eps 1e-6
    (ours 1e-5, nn.LayerNorm's, as the authors' code) so it is set to 1e-5. Init differs: timm zeroes only the last
    conv's weight, not its bias, so it is not an identity at init; irrelevant here since weights are copied."""
    timm_layers = pytest.importorskip("timm.layers")
    block = perturb(build_attention("gc", CT))
    ref = timm_layers.GlobalContext(CT, fuse_add=True, fuse_scale=False,
                                    rd_channels=block.mlp_add.fc1.out_channels)
    ref.mlp_add.norm.eps = block.mlp_add.norm.eps
    ref.load_state_dict(block.state_dict())
    _timm_check(block, ref)


def test_timm_non_local():
    """timm NonLocalAttn(use_scale=False, rd_channels=C/2) computes the same embedded Gaussian, but follows the
    output conv with BatchNorm2d (zero-initialised); ours has no norm and zero-inits the conv instead. timm's BN in
    eval mode is set to the identity; t, p, g, z map to theta, phi, g, z."""
    timm_layers = pytest.importorskip("timm.layers")
    block = perturb(build_attention("nl", CT))
    ref = timm_layers.NonLocalAttn(CT, use_scale=False, rd_channels=CT // 2)
    ours = block.state_dict()
    ref.load_state_dict({**{k.replace("theta", "t").replace("phi", "p"): v for k, v in ours.items()},
                         **{k: v for k, v in ref.state_dict().items() if k.startswith("norm.")}})
    _identity_bn(ref.norm)
    _timm_check(block, ref)


# ---- equivalence with transcriptions of the authors' code (no padding) ----


def _official_coord_attention(attn, x):
    """CoordAtt.forward of github.com/houqb/CoordAttention with its BatchNorm replaced by our norm."""
    n, c, h, w = x.size()
    x_h = F.adaptive_avg_pool2d(x, (None, 1))
    x_w = F.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)
    y = attn.act(attn.norm(attn.conv1(torch.cat([x_h, x_w], dim=2))))
    x_h, x_w = torch.split(y, [h, w], dim=2)
    x_w = x_w.permute(0, 1, 3, 2)
    return x * attn.conv_w(x_w).sigmoid() * attn.conv_h(x_h).sigmoid()


def _official_criss_cross(cca, x):
    """CrissCrossAttention.forward of github.com/speedinghzl/CCNet (pure PyTorch version, -inf diagonal)."""
    b, _, height, width = x.size()
    inf = -torch.diag(torch.tensor(float("inf")).repeat(height), 0).unsqueeze(0).repeat(b * width, 1, 1)
    q, k, v = cca.query(x), cca.key(x), cca.value(x)
    q_h = q.permute(0, 3, 1, 2).contiguous().view(b * width, -1, height).permute(0, 2, 1)
    q_w = q.permute(0, 2, 1, 3).contiguous().view(b * height, -1, width).permute(0, 2, 1)
    k_h = k.permute(0, 3, 1, 2).contiguous().view(b * width, -1, height)
    k_w = k.permute(0, 2, 1, 3).contiguous().view(b * height, -1, width)
    v_h = v.permute(0, 3, 1, 2).contiguous().view(b * width, -1, height)
    v_w = v.permute(0, 2, 1, 3).contiguous().view(b * height, -1, width)
    energy_h = (torch.bmm(q_h, k_h) + inf).view(b, width, height, height).permute(0, 2, 1, 3)
    energy_w = torch.bmm(q_w, k_w).view(b, height, width, width)
    concate = torch.cat([energy_h, energy_w], 3).softmax(3)
    att_h = concate[:, :, :, 0:height].permute(0, 2, 1, 3).contiguous().view(b * width, height, height)
    att_w = concate[:, :, :, height:height + width].contiguous().view(b * height, width, width)
    out_h = torch.bmm(v_h, att_h.permute(0, 2, 1)).view(b, width, -1, height).permute(0, 2, 3, 1)
    out_w = torch.bmm(v_w, att_w.permute(0, 2, 1)).view(b, height, -1, width).permute(0, 2, 1, 3)
    return cca.gamma * (out_h + out_w) + x


def _official_dual_attention(da, x):
    """PAM_Module and CAM_Module of github.com/junfu1115/DANet, summed as PAM(x) + CAM(x) - x."""
    b, c, height, width = x.size()
    query = da.query(x).view(b, -1, width * height).permute(0, 2, 1)
    key = da.key(x).view(b, -1, width * height)
    attention = torch.bmm(query, key).softmax(-1)
    value = da.value(x).view(b, -1, width * height)
    pam = da.gamma_p * torch.bmm(value, attention.permute(0, 2, 1)).view(b, c, height, width) + x
    flat = x.view(b, c, -1)
    energy = torch.bmm(flat, flat.permute(0, 2, 1))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    cam = da.gamma_c * torch.bmm(energy_new.softmax(-1), flat).view(b, c, height, width) + x
    return pam + cam - x


def test_official_coord_attention():
    block = perturb(build_attention("ca", C))
    x = torch.randn(2, C, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _official_coord_attention(block.attn, x), rtol=1e-5, atol=1e-5)


def test_official_criss_cross_recurrence_two():
    block = perturb(build_attention("cc", C))
    x = torch.randn(2, C, 5, 6)
    with torch.no_grad():
        expected = _official_criss_cross(block.cca, _official_criss_cross(block.cca, x))
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_official_dual_attention():
    block = perturb(build_attention("da", C))
    x = 0.3 * torch.randn(2, C, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _official_dual_attention(block, x), rtol=1e-5, atol=1e-5)
