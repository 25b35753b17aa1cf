"""Pictures of what DETR and its backbone attention blocks look at, for one image.

Usage: python -m tools.analysis.visualize_attention --config configs/demo_cpu_gc.yaml \\
           --resume outputs/x/checkpoint.pth --image data/synthetic/val2017/000002001.jpg --out outputs/vis \\
           [--pixel 0.5 0.5] [--threshold 0.7] [--heatmap_layer layer4] [--tau 0.7]

Writes to --out:
- ``detections.png``: the image with the predicted boxes (score >= --threshold);
- ``decoder_attention.png``: for each of those boxes, the last decoder layer's cross-attention over the encoder
  tokens (averaged over heads), next to the box;
- ``attn_<place>.png`` for every backbone attention block: the maps the block computes (GC's attention pooling
  weights, CA's height and width gates, CBAM's spatial gate, NL/CC/DA/AA attention and SASA window attention of the
  pixel at --pixel, RAN's soft mask, STN's sampling density), drawn over the image;
- ``hard_attention.png``: AG-CNN's hard-attention heat map ``max_k |f^k|`` of the stage --heatmap_layer (default: the
  last one computed), its region above --tau times the map's maximum, the largest connected part of it and that part's
  bounding box on the image (tools/analysis/hard_attention.py); for any model, with or without blocks.
Blocks expose their maps through ``attention_maps(x, mask, query)``; see models/attention.
"""
import argparse
from pathlib import Path

import torch
from PIL import Image

import cli
from datasets.coco import make_coco_transforms
from models import build_model
from tools.analysis.hard_attention import HardAttention, hard_attention
from util.checkpoint import load_checkpoint, load_matching_state_dict
from util.config import parse_args_with_config
from util.nested_tensor import nested_tensor_from_tensor_list


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DETR attention pictures", parents=[cli.get_args_parser()])
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--out", default="outputs/vis", help="folder for the PNGs")
    parser.add_argument("--pixel", type=float, nargs=2, default=(0.5, 0.5), metavar=("Y", "X"),
                        help="query pixel for NL/CC/DA maps, as fractions of height and width")
    parser.add_argument("--threshold", type=float, default=0.7, help="score threshold for drawn detections")
    parser.add_argument("--heatmap_layer", default=None, choices=("layer1", "layer2", "layer3", "layer4"),
                        help="stage whose hard-attention heat map (AG-CNN) is drawn (default: the last computed)")
    parser.add_argument("--tau", type=float, default=0.7,
                        help="AG-CNN threshold, relative to the heat map's maximum (in [0, 1]; the paper's 0.7)")
    return parser


def collect(model: torch.nn.Module, image: torch.Tensor, pixel: tuple[float, float], heatmap_layer: str,
            tau: float = 0.7) -> dict:
    """Run the model on one normalised image ``[3, H, W]``; return outputs, decoder attention ``[Q, h, w]``, the
    blocks' maps {place: {name: [h', w']}} and the hard attention of stage ``heatmap_layer`` (after its blocks)."""
    captured = {"block_inputs": {}}
    handles = []
    body = model.backbone[0].body
    if heatmap_layer not in body:
        raise ValueError(f"--heatmap_layer {heatmap_layer} is not computed by this backbone (it has "
                         f"{', '.join(name for name in body if name.startswith('layer'))})")
    handles.append(body[heatmap_layer].register_forward_hook(lambda m, i, o: captured.__setitem__("stage", o)))
    attn = getattr(model.backbone[0], "attn", None)
    if attn is not None:
        for place, block in attn.blocks.items():
            handles.append(block.register_forward_pre_hook(
                lambda module, args, kwargs, place=place: captured["block_inputs"].__setitem__(place, (args, kwargs)),
                with_kwargs=True))
    last_decoder_layer = model.transformer.decoder.layers[-1]
    computed_weights = last_decoder_layer.need_weights
    last_decoder_layer.need_weights = True  # its cross-attention returns the head-averaged maps (output[1])
    handles.append(last_decoder_layer.multihead_attn.register_forward_hook(
        lambda m, i, o: captured.__setitem__("cross", o[1])))
    handles.append(model.backbone.register_forward_hook(
        lambda m, i, o: captured.__setitem__("feature_size", o[0][-1].tensors.shape[-2:])))
    try:
        model.eval()
        with torch.no_grad():
            outputs = model(nested_tensor_from_tensor_list([image]))
            maps = {}
            for place, ((x, mask), kwargs) in captured["block_inputs"].items():
                query = (min(int(pixel[0] * x.shape[-2]), x.shape[-2] - 1),
                         min(int(pixel[1] * x.shape[-1]), x.shape[-1] - 1))
                block_maps = attn.blocks[place].attention_maps(x, mask, query, **kwargs)
                maps[place] = {k: v[0] for k, v in block_maps.items()}
    finally:
        last_decoder_layer.need_weights = computed_weights
        for h in handles:
            h.remove()
    h, w = captured["feature_size"]
    return {"outputs": outputs, "cross": captured["cross"][0].reshape(-1, h, w), "block_maps": maps,
            "hard": hard_attention(captured["stage"], tau=tau)[0], "hard_layer": heatmap_layer, "tau": tau}


def draw(image: Image.Image, found: dict, threshold: float, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    probs = found["outputs"]["pred_logits"][0].softmax(-1)[:, :-1]
    scores, labels = probs.max(-1)
    keep = (scores >= threshold).nonzero().flatten().tolist()
    boxes = found["outputs"]["pred_boxes"][0]
    width, height = image.size
    written = []

    def add_box(ax, q):
        cx, cy, bw, bh = (boxes[q] * torch.tensor([width, height, width, height])).tolist()
        ax.add_patch(plt.Rectangle((cx - bw / 2, cy - bh / 2), bw, bh, fill=False, color="red", linewidth=2))

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(image)
    for q in keep:
        add_box(ax, q)
        cx, cy = boxes[q, 0].item() * width, boxes[q, 1].item() * height
        ax.text(cx, cy, f"{labels[q].item()}:{scores[q].item():.2f}", color="yellow", fontsize=8)
    ax.set_axis_off()
    written.append(out / "detections.png")
    fig.savefig(written[-1], bbox_inches="tight")
    plt.close(fig)

    if keep:
        fig, axes = plt.subplots(2, len(keep), figsize=(3 * len(keep), 6), squeeze=False)
        for col, q in enumerate(keep):
            axes[0, col].imshow(image)
            add_box(axes[0, col], q)
            axes[0, col].set_title(f"query {q}: class {labels[q].item()}")
            axes[1, col].imshow(found["cross"][q].numpy(), cmap="viridis")
            axes[1, col].set_title("decoder cross-attention")
            for ax in axes[:, col]:
                ax.set_axis_off()
        written.append(out / "decoder_attention.png")
        fig.savefig(written[-1], bbox_inches="tight")
        plt.close(fig)

    for place, maps in found["block_maps"].items():
        fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3 * (len(maps) + 1), 3), squeeze=False)
        axes[0, 0].imshow(image)
        axes[0, 0].set_title("image")
        for ax, (name, m) in zip(axes[0, 1:], maps.items()):
            ax.imshow(image)
            ax.imshow(m.float().numpy(), cmap="jet", alpha=0.5, extent=(0, width, height, 0), interpolation="nearest")
            ax.set_title(f"{place}: {name}", fontsize=8)
        for ax in axes[0]:
            ax.set_axis_off()
        written.append(out / f"attn_{place}.png")
        fig.savefig(written[-1], bbox_inches="tight")
        plt.close(fig)

    written.append(out / "hard_attention.png")
    draw_hard_attention(plt, image, found["hard"], f"{found['hard_layer']}, tau {found['tau']}", written[-1])
    return written


def draw_hard_attention(plt, image: Image.Image, hard: HardAttention, title: str, path: Path) -> None:
    """Three panels: the heat map over the image, the thresholded mask with its largest region, the region's box."""
    width, height = image.size
    cells_h, cells_w = hard.heat.shape
    extent = (0, width, height, 0)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].imshow(hard.heat.float().numpy(), cmap="jet", alpha=0.5, extent=extent, interpolation="nearest")
    axes[0, 0].set_title(f"heat map max_k |f_k| ({title})", fontsize=8)
    axes[0, 1].imshow(hard.binary.float().numpy() + hard.region.float().numpy(), cmap="gray", vmin=0, vmax=2,
                      extent=extent, interpolation="nearest")
    axes[0, 1].set_title("above tau (grey), largest region (white)", fontsize=8)
    axes[0, 2].imshow(image)
    if hard.box is not None:  # cells -> image pixels: cell (x, y) covers [x, x + 1) * width / cells_w, ...
        x0, y0, x1, y1 = hard.box
        sx, sy = width / cells_w, height / cells_h
        axes[0, 2].add_patch(plt.Rectangle((x0 * sx, y0 * sy), (x1 + 1 - x0) * sx, (y1 + 1 - y0) * sy, fill=False,
                                           color="red", linewidth=2))
    axes[0, 2].set_title(f"attended box (cells {hard.box})", fontsize=8)
    for ax in axes[0]:
        ax.set_axis_off()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> list[Path]:
    args = parse_args_with_config(get_parser(), argv)
    if not 0.0 <= args.tau <= 1.0:
        raise ValueError(f"--tau must be in [0, 1] (relative to the heat map's maximum), got {args.tau}")
    args.device = "cpu"
    if args.num_classes is None:
        args.num_classes = 91
    model, _, _ = build_model(args)
    if args.resume:
        # an official checkpoint has no block parameters: they stay at initialisation (identity)
        skipped, missing = load_matching_state_dict(model, load_checkpoint(args.resume)["model"])
        if skipped or missing:
            print(f"--resume {args.resume}: skipped {skipped}; left at initialisation: {missing}", flush=True)
    else:
        print("no --resume: drawing an untrained model's attention", flush=True)
    image = Image.open(args.image).convert("RGB")
    tensor, _ = make_coco_transforms("val", args.image_size)(image, None)
    found = collect(model, tensor, tuple(args.pixel), args.heatmap_layer or args.feature_layer, args.tau)
    written = draw(image, found, args.threshold, Path(args.out))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
