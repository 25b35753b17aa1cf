"""A trained model exported for deployment, and checked against the eager model right after writing.

    python -m tools.export --resume outputs/run/checkpoint.pth --format onnx --output outputs/model.onnx \\
        [--config FILE | model flags] [--opset 18] [--tolerance 1e-4]

``--resume`` as for tools/predict.py (a checkpoint of ours needs no other flag). ``--format``:
- ``onnx``: ONNX opset ``--opset`` (default 18) through ``torch.onnx.export(dynamo=True)``, one file (weights
  inside), checked with onnxruntime. The graph is written unoptimised (``optimize=False``): onnxscript's optimiser
  (its Max/Min -> Clip fusion, onnxscript 0.7) leaves a dangling input in the graphs of box refinement (Deformable
  DETR's refine and two-stage models), which onnxruntime then refuses to load; onnxruntime optimises every graph
  itself when it loads it.
- ``torchscript``: ``torch.jit.script`` where the model compiles (DETR, with or without masks), else
  ``torch.jit.trace`` (Deformable DETR and DINO: their Python (lambdas, lists of sizes, dict outputs) does not
  compile); a trace records the shape arithmetic, and the check below runs it at sizes other than the traced one.
- ``exported_program``: ``torch.export`` with dynamic height and width, saved with ``torch.export.save``
  (``.pt2``); the program accepts the sizes the printed range allows (at least 2 cells on the coarsest feature map,
  e.g. 65 px and up for 4 feature levels of stride 64).

The exported model takes one image, ``images`` ``[1, 3, H, W]`` float32 of any height and width: RGB, resized
and normalised as the validation transform does (``datasets.coco.make_coco_transforms("val", image_size)``:
shorter side ``--image_size``, ImageNet mean and std). Models of the ``rtdetr`` data pipeline (RT-DETRv2) are
exported in deploy form (RepVGG blocks folded, ``model.deploy()``, as the official export) at their fixed
``--eval_spatial_size`` (their stored anchors and position tables), taking images in [0, 1] resized to that size.
It returns ``pred_logits`` ``[1, Q, K]`` (DETR: softmax logits with a last "no object" class; the others: sigmoid
logits), ``pred_boxes`` ``[1, Q, 4]`` (cx, cy, w, h in [0, 1] of the image) and, for mask models, ``pred_masks``
``[1, Q, H/4, W/4]`` (logits); the post-processing (models/postprocess.py) stays outside.

Check: the written file is loaded back (onnxruntime, ``torch.jit.load``, ``torch.export.load``) and run on two
inputs of other sizes than the export example (320 x 480 and 448 x 352; fixed-size models: two other inputs of their
size); the largest absolute difference from the eager model over all outputs is printed as ``max abs diff: X``, and
above ``--tolerance`` (default 1e-4) the tool exits with status 1. A model or format that cannot be exported ends in
one line ``error: ...`` (status 1), without a traceback.
"""
import argparse
import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

import cli
from tools.command_line import run_tool
from tools.model_loading import load_model, parse_with_checkpoint_flags
from util.nested_tensor import NestedTensor
from util.user_error import UserError

FORMATS = ("onnx", "torchscript", "exported_program")
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
EXAMPLE_SHAPE = (1, 3, 384, 512)  # divisible by 128: no feature map of 1 cell, which torch.export would fix
CHECK_SHAPES = ((1, 3, 320, 480), (1, 3, 448, 352))


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Export a DETR family model", parents=[cli.get_args_parser()])
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--output", required=True, help="file to write (.onnx, .pt, .pt2)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest absolute difference from the eager model's outputs accepted by the check")
    parser.set_defaults(device="cpu")
    return parser


class ImageModel(nn.Module):
    """A detector as deployment sees it: ``images`` ``[1, 3, H, W]`` (normalised, unpadded) -> (``pred_logits``,
    ``pred_boxes``) or, for mask models, (``pred_logits``, ``pred_boxes``, ``pred_masks``). Auxiliary outputs
    (earlier decoder layers) are switched off."""

    def __init__(self, model: nn.Module, masks: bool):
        super().__init__()
        getattr(model, "detr", model).aux_loss = False
        self.model = model.eval()
        self.masks = masks

    def forward(self, images: Tensor) -> list[Tensor]:
        mask = torch.zeros((images.shape[0], images.shape[2], images.shape[3]), dtype=torch.bool,
                           device=images.device)
        outputs = self.model(NestedTensor(images, mask))
        if self.masks:
            return [outputs["pred_logits"], outputs["pred_boxes"], outputs["pred_masks"]]
        return [outputs["pred_logits"], outputs["pred_boxes"]]


def output_names(masks: bool) -> list[str]:
    return ["pred_logits", "pred_boxes"] + (["pred_masks"] if masks else [])


def main(argv: list[str] | None = None) -> float:
    """Run the command line ``argv``; returns the check's max abs diff (raises UserError above the tolerance)."""
    args, checkpoint = parse_with_checkpoint_flags(get_parser(), argv)
    loaded = load_model(args, checkpoint)
    masks = bool(loaded.args.masks)
    what = f"{loaded.args.meta_arch}{' with --masks' if masks else ''}"
    fixed = tuple(loaded.args.eval_spatial_size) if loaded.args.data_pipeline == "rtdetr" else None
    if hasattr(loaded.model, "deploy"):
        loaded.model.deploy()  # the deployed form (RepVGG blocks folded), as the official export
    wrapper = ImageModel(loaded.model, masks)
    for p in wrapper.parameters():
        p.requires_grad_(False)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    example_shape, check_shapes = ((1, 3, *fixed), [(1, 3, *fixed)] * 2) if fixed else (EXAMPLE_SHAPE, CHECK_SHAPES)
    example = torch.randn(example_shape, generator=generator).to(device)
    checks = [torch.randn(shape, generator=generator).to(device) for shape in check_shapes]
    args.dynamic_size = fixed is None
    output = Path(args.output)
    if args.format == "exported_program" and output.suffix != ".pt2":
        raise UserError(f"--output {output}: torch.export programs load back only from a file ending in .pt2")
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"exporting {what} from {loaded.source} as {args.format} to {output}", flush=True)
    run = EXPORTERS[args.format](wrapper, example, output, args, what)
    with torch.no_grad():
        diff = max((got.float() - expected.float()).abs().max().item() if got.numel() else 0.0
                   for x in checks for got, expected in zip(run(x), wrapper(x)))
    print(f"max abs diff: {diff:.3g} (tolerance {args.tolerance:g}; inputs {', '.join(_shape(x) for x in checks)})",
          flush=True)
    if not diff <= args.tolerance:
        raise UserError(f"the exported model's outputs differ from the eager model's by {diff:.3g}, more than "
                        f"--tolerance {args.tolerance:g}; {output} is kept for inspection")
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)", flush=True)
    return diff


def _shape(x: Tensor) -> str:
    return "x".join(map(str, x.shape))


@contextlib.contextmanager
def _failure_as_one_line(fmt: str, what: str, stage: str):
    """Turn an exporter's failure (a long traceback) into one UserError line naming the format and the model."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporters warn at length about deprecations and guards
            yield
    except UserError:
        raise
    except Exception as exc:  # the exporters raise many types
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise UserError(f"--format {fmt}: cannot {stage} {what}: {type(exc).__name__}: {reason[:300]}") from exc


def export_onnx(wrapper: ImageModel, example: Tensor, output: Path, args: argparse.Namespace, what: str):
    import onnxruntime

    names = output_names(wrapper.masks)
    with _failure_as_one_line("onnx", what, "export"), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(wrapper, (example,), str(output), input_names=["images"], output_names=names,
                          dynamic_shapes={"images": {2: "height", 3: "width"}} if args.dynamic_size else None,
                          opset_version=args.opset, dynamo=True, optimize=False, external_data=False, verbose=False)
    with _failure_as_one_line("onnx", what, "load with onnxruntime the ONNX file of"):
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its optimiser notes every node it cannot fold
        session = onnxruntime.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
    size = "height, width" if args.dynamic_size else ", ".join(map(str, example.shape[2:]))
    print(f"ONNX opset {args.opset}; input images [1, 3, {size}]; outputs {', '.join(names)}", flush=True)

    def run(x: Tensor) -> list[Tensor]:
        with _failure_as_one_line("onnx", what, "run in onnxruntime the ONNX file of"):
            return [torch.from_numpy(y) for y in session.run(None, {"images": x.cpu().numpy()})]
    return run


def export_torchscript(wrapper: ImageModel, example: Tensor, output: Path, args: argparse.Namespace, what: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.jit.script(wrapper)
        how = "scripted"
    except Exception as exc:  # TorchScript's frontend raises many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with _failure_as_one_line("torchscript", what, "trace"):
            program = torch.jit.trace(wrapper, (example,), check_trace=False)
        how = f"traced (torch.jit.script cannot compile it: {reason})"
    with _failure_as_one_line("torchscript", what, "save or load the TorchScript of"):
        torch.jit.save(program, str(output))
        loaded = torch.jit.load(str(output), map_location=args.device)
    print(f"TorchScript: {how}", flush=True)

    def run(x: Tensor) -> list[Tensor]:
        with _failure_as_one_line("torchscript", what, "run the TorchScript of"), torch.no_grad():
            return loaded(x)
    return run


def export_program(wrapper: ImageModel, example: Tensor, output: Path, args: argparse.Namespace, what: str):
    auto = torch.export.Dim.AUTO
    with _failure_as_one_line("exported_program", what, "export"):
        dynamic = {"images": {2: auto, 3: auto}} if args.dynamic_size else None
        program = torch.export.export(wrapper, (example,), dynamic_shapes=dynamic)
        torch.export.save(program, str(output))
    with _failure_as_one_line("exported_program", what, "load the program of"):
        module = torch.export.load(str(output)).module()
    print(f"torch.export: {_input_ranges(program)}", flush=True)

    def run(x: Tensor) -> list[Tensor]:
        with _failure_as_one_line("exported_program", what, "run the program of"), torch.no_grad():
            return module(x)
    return run


def _input_ranges(program) -> str:
    """'height 65..inf, width 65..inf' (or 'static N') from an ExportedProgram's input shape."""
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name.startswith("images"))
    parts = []
    for name, size in zip(("batch", "channels", "height", "width"), placeholder.meta["val"].shape):
        if name in ("batch", "channels"):
            continue
        if isinstance(size, int):
            parts.append(f"{name} static {size}")
            continue
        bounds = program.range_constraints.get(size.node.expr)
        lower, upper = (bounds.lower, bounds.upper) if bounds is not None else (0, None)
        parts.append(f"{name} {_bound(lower)}..{_bound(upper)}")
    return "accepts " + ", ".join(parts)


def _bound(value) -> str:
    """A range bound (a sympy integer or infinity) as text."""
    try:
        return str(int(value))
    except (TypeError, ValueError, AttributeError, OverflowError):
        return "inf"


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "exported_program": export_program}


if __name__ == "__main__":
    raise SystemExit(run_tool(main))
