"""benchmarks/attention_contribution.py: zero for blocks at initialisation, positive once they moved."""
import torch

from benchmarks.attention_contribution import relative_change
from models import build_model


def test_contribution_is_zero_at_identity_and_grows_when_blocks_move(tiny_args, tiny_coco):
    args = tiny_args(tiny_coco, "--backbone_attn", "gc", "--num_classes", "12")
    torch.manual_seed(0)
    model, _, _ = build_model(args)
    identity, _, _ = build_model(args)
    identity.load_state_dict(model.state_dict())
    images = [torch.rand(3, 64, 48), torch.rand(3, 40, 64)]
    assert relative_change(model, identity, images) == 0.0
    with torch.no_grad():
        for p in model.backbone[0].attn.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert relative_change(model, identity, images) > 1e-3
