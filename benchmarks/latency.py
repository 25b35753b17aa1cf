"""Per-image latency of a model at its deploy size, batch 1, as RT-DETR and D-FINE report it: warm-up runs, then the
median and 90th percentile over a fixed number of runs, with pre-processing (the validation transform of a decoded
image), the model and post-processing timed separately.

Usage: python -m benchmarks.latency --config configs/rtdetrv2_r18vd.yaml [--config ...] \\
           [--backends eager compile onnxruntime] [--runs 50] [--warmup 10] [--threads 2] [--device cpu] [--record]

Each preset's model is built with random weights (latency does not depend on them), in deploy form where it has one
(RT-DETRv2: its RepVGG blocks folded, ``model.deploy()``), in evaluation mode. Its input is a fixed 1280 x 720
photograph-sized RGB image (random pixels), turned by the preset's validation transform into the model's input
(RT-DETRv2: 640 x 640 in [0, 1]; DETR's family: shorter side ``--image_size``, normalised); post-processing is the
preset's ``bbox`` post-processor on the model's outputs. Backends: ``eager`` (PyTorch), ``compile``
(``torch.compile``, static shapes; its compilation falls in the warm-up runs) and ``onnxruntime`` (the model exported
with ``torch.onnx.export(dynamo=True)`` at the input's size, run by an onnxruntime CPU or CUDA session with
``--threads`` intra-op threads). Backends alternate run by run, so that a change of machine load falls on all of
them. ``--record`` writes the table between the latency markers of benchmarks/RESULTS.md.
"""
import argparse
import contextlib
import io
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cli
from benchmarks.benchmark import hardware
from benchmarks.results_section import write_section
from datasets.coco import image_transform
from models import build_model
from models.postprocess import detections
from util.config import parse_args_with_config

BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"
BACKENDS = ("eager", "compile", "onnxruntime")
IMAGE_SIZE = (1280, 720)  # width, height of the decoded input image


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Per-image latency of presets at batch 1")
    parser.add_argument("--config", action="append", required=True, help="a preset (repeat for several)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per backend")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    return parser


def preset_model(preset: str, device: torch.device):
    """(deploy-form model in eval mode, its bbox post-processor, resolved args) of a preset, random weights."""
    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    args = parse_args_with_config(parser, ["--config", preset, "--no_pretrained_backbone", "--device", str(device)])
    args = cli.resolve_data_pipeline(args)
    if args.num_classes is None:
        args.num_classes = 80 if args.data_pipeline == "rtdetr" else 91
    torch.manual_seed(0)
    model, _, postprocessors = build_model(args)
    model = model.to(device).eval()
    if hasattr(model, "deploy"):
        model.deploy()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, postprocessors["bbox"], args


class Outputs(torch.nn.Module):
    """The model on ``images`` ``[1, 3, H, W]`` -> (``pred_logits``, ``pred_boxes``): what the backends run."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        getattr(model, "detr", model).aux_loss = False
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from util.nested_tensor import NestedTensor

        mask = torch.zeros((images.shape[0], *images.shape[2:]), dtype=torch.bool, device=images.device)
        out = self.model(NestedTensor(images, mask))
        return out["pred_logits"], out["pred_boxes"]


def onnx_session(wrapper: Outputs, example: torch.Tensor, threads: int, device: torch.device):
    """An onnxruntime session of ``wrapper`` exported at ``example``'s shape (the file in a temporary folder)."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "model.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(wrapper, (example,), str(path), input_names=["images"],
                              output_names=["pred_logits", "pred_boxes"], dynamo=True, optimize=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)

    def run(images: torch.Tensor):
        logits, boxes = session.run(None, {"images": images.cpu().numpy()})
        return torch.from_numpy(logits).to(device), torch.from_numpy(boxes).to(device)

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, (time.perf_counter() - start) * 1000.0


def measure(preset: str, backends: list[str], runs: int, warmup: int, threads: int, device: torch.device) -> dict:
    """{stage or backend: (median ms, p90 ms)} of one preset; stages: ``preprocess``, ``postprocess``."""
    model, postprocessor, args = preset_model(preset, device)
    transform = image_transform(args.data_pipeline, args.image_size)
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    example = transform(image)[None].to(device)
    wrapper = Outputs(model)
    runners = {"eager": wrapper}
    if "compile" in backends:
        runners["compile"] = torch.compile(wrapper, dynamic=False)
    if "onnxruntime" in backends:
        runners["onnxruntime"] = onnx_session(wrapper, example, threads, device)
    runners = {name: runners[name] for name in backends}
    sizes = torch.tensor([[IMAGE_SIZE[1], IMAGE_SIZE[0]]], device=device)
    times = {name: [] for name in ["preprocess", *backends, "postprocess"]}
    with torch.inference_mode():
        for k in range(warmup + runs):
            images, pre_ms = _timed(lambda: transform(image)[None].to(device), device)
            for name, runner in runners.items():
                (logits, boxes), ms = _timed(lambda runner=runner, images=images: runner(images), device)
                if k >= warmup:
                    times[name].append(ms)
            outputs = {"pred_logits": logits, "pred_boxes": boxes}
            _, post_ms = _timed(lambda outputs=outputs: detections(postprocessor, outputs, sizes), device)
            if k >= warmup:
                times["preprocess"].append(pre_ms)
                times["postprocess"].append(post_ms)
    return {name: (statistics.median(v), float(np.percentile(v, 90))) for name, v in times.items()}


def table(results: dict[str, dict], backends: list[str]) -> str:
    stages = ["preprocess", *backends, "postprocess"]
    header = "| preset | input | " + " | ".join(f"{s} median / p90 (ms)" for s in stages) + " |"
    lines = [header, "|" + " --- |" * (len(stages) + 2)]
    for preset, (size, figures) in results.items():
        cells = " | ".join(f"{figures[s][0]:.1f} / {figures[s][1]:.1f}" for s in stages)
        lines.append(f"| `{Path(preset).name}` | {size} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {}
    for preset in args.config:
        _, _, preset_args = preset_model(preset, device)
        size = f"{preset_args.image_size} px" if preset_args.data_pipeline == "rtdetr" else \
            f"shorter side {preset_args.image_size}"
        results[preset] = (size, measure(preset, args.backends, args.runs, args.warmup, args.threads, device))
        print(f"{preset}: " + ", ".join(f"{k} {v[0]:.1f}/{v[1]:.1f} ms" for k, v in results[preset][1].items()),
              flush=True)
    text = table(results, args.backends)
    print(text)
    if args.record:
        command = "python -m benchmarks.latency " + " ".join(f"--config {p}" for p in args.config) + \
            f" --backends {' '.join(args.backends)} --runs {args.runs} --warmup {args.warmup} --threads {args.threads}"
        block = (f"{BEGIN}\nMeasured {time.strftime('%Y-%m-%d')} on {hardware(device)}, batch 1, {args.runs} runs "
                 f"after {args.warmup} warm-up runs, backends alternating run by run; random weights, deploy form. "
                 f"Command: `{command}`\n\n{text}\n{END}")
        write_section(block, BEGIN, END, "Latency at batch 1 (benchmarks/latency.py)")
    return results


if __name__ == "__main__":
    main()
