"""How much trained backbone attention blocks change the features DETR sees.

Usage: python -m benchmarks.attention_contribution --config configs/demo_cpu_gc.yaml \\
           --checkpoints outputs/a/checkpoint.pth outputs/b/checkpoint.pth --coco_path data/synthetic

For each checkpoint: the backbone's output features on the first --num_images val images, once as trained and once
with every block reset to its initialisation (an identity), and the relative change
``||f_trained - f_identity|| / ||f_identity||`` (mean over images). 0 means the blocks learned nothing that reaches
the features; it shows whether a block's learning rate (``--lr_attn``) lets it move at all.
"""
import argparse

import torch

import cli
import datasets
from models import build_model
from util.checkpoint import load_checkpoint
from util.config import parse_args_with_config
from util.nested_tensor import nested_tensor_from_tensor_list

ATTENTION_PREFIX = "backbone.0.attn."


def relative_change(model: torch.nn.Module, identity: torch.nn.Module, images: list[torch.Tensor]) -> float:
    """Mean over ``images`` (``[3, H, W]`` each) of the relative L2 change between the last backbone feature maps
    of ``model`` and of ``identity`` (the same weights with the blocks at initialisation)."""
    model.eval()
    identity.eval()
    changes = []
    with torch.no_grad():
        for image in images:
            batch = nested_tensor_from_tensor_list([image])
            trained = model.backbone(batch)[0][-1].tensors
            reference = identity.backbone(batch)[0][-1].tensors
            changes.append(((trained - reference).norm() / reference.norm()).item())
    return sum(changes) / len(changes)


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser("attention block contribution", parents=[cli.get_args_parser()])
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--num_images", type=int, default=32)
    args = parse_args_with_config(parser, argv)
    dataset = datasets.build_dataset("val", args)
    args.num_classes = dataset.num_classes()
    images = [dataset[i][0] for i in range(min(args.num_images, len(dataset)))]
    results = {}
    for path in args.checkpoints:
        model, _, _ = build_model(args)
        if getattr(model.backbone[0], "attn", None) is None:
            raise ValueError("--backbone_attn: the model has no attention blocks to measure")
        state = load_checkpoint(path, flag="--checkpoints")["model"]
        model.load_state_dict(state)
        identity, _, _ = build_model(args)  # blocks at initialisation: identities
        missing, unexpected = identity.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith(ATTENTION_PREFIX)}, strict=False)
        assert all(k.startswith(ATTENTION_PREFIX) for k in missing) and not unexpected
        results[path] = relative_change(model, identity, images)
        print(f"{path}: features change by {100 * results[path]:.2f}% through the blocks", flush=True)
    return results


if __name__ == "__main__":
    main()
