"""Reference values of the official DINO, for tests/test_dino.py.

Run with a clone of https://github.com/IDEA-Research/DINO (its CUDA extension need not be built: the official
pure-PyTorch sampling function stands in for it; its ``.cuda()`` calls become no-ops)::

    .venv/bin/python -m tools.reference.dino --official /path/to/DINO

It saves, from the official code:

- the state-dict names and shapes of the official 4-scale and 5-scale models (config/DINO/DINO_{4,5}scale.py,
  ResNet-50, full widths; no weights);
- for each tiny case (a ResNet-18 in the official backbone classes, whose builder takes ResNet-50/101 only; 256
  channels, which the official anchor embedding hard-codes; one encoder and two decoder layers, 12 queries, 7
  classes): the per-entry sums of the official initialisation from ``torch.manual_seed(0)``, the loss weights,
  and, after ``perturb`` has moved every weight off its (often zero) initial value, on a padded batch of two
  images: the eval-mode outputs, losses and post-processed detections; on a batch of three images (3, 0 and 2
  targets) in training mode, with the random denoising noise (and dropout) drawn after
  ``torch.manual_seed(DN_SEED)``: the outputs (denoising ones included), the loss dict and the gradient norms of
  the weighted loss.

On the way it checks that our model built from the same seed has the official initial weights bit for bit, that
ours loads the official state dicts with strict=True, and prints the largest difference between our outputs and
the official ones. The official code is imported only when the script runs; the tests import this module for the
cases, the inputs, ``perturb`` and the (un)packing, never the official code.
"""
import argparse
import types
import zlib
from pathlib import Path

import torch
from torch import nn

from tools.reference.common import official_packages, pack, stub_cuda_extension, use_pytorch_sampling

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_FILE = ROOT / "tests" / "golden" / "dino_reference.pt"
NUM_CLASSES = 7
DN_SEED = 1234
PERTURB_SEED = 5

# the official training scripts (scripts/DINO_train*.sh) run the configs with these --options
SCRIPT_OPTIONS = {"dn_box_noise_scale": 1.0, "embed_init_tgt": True}
PRESETS = {4: "configs/dino_4scale.yaml", 5: "configs/dino_5scale.yaml"}
OFFICIAL_CONFIGS = {4: "config/DINO/DINO_4scale.py", 5: "config/DINO/DINO_5scale.py"}

TINY = {"backbone": "resnet18", "hidden_dim": 256, "nheads": 8, "enc_layers": 1, "dec_layers": 2,
        "dim_feedforward": 64, "num_queries": 12, "num_classes": NUM_CLASSES, "dn_labelbook_size": NUM_CLASSES,
        "enc_n_points": 2, "dec_n_points": 2, "num_select": 40}

# case name -> (scales, official config keys set on top of the preset and TINY)
CASES = {
    # the 4-scale model as released: 33 denoising groups of 3 + 3 queries for a most crowded image of 3 targets
    "4scale": (4, {}),
    # 5 levels from layer1, 6 groups (dn_number below 50), learned proposal size, per-layer heads, content queries
    # from the encoder, dropout in training
    "5scale_unshared": (5, {"dn_number": 3, "dn_label_noise_ratio": 1.0, "two_stage_learn_wh": True,
                            "dec_pred_class_embed_share": False, "dec_pred_bbox_embed_share": False,
                            "embed_init_tgt": False, "dropout": 0.1}),
    # learned anchors, deformable "self-attention", PReLU, another block order, detached box outputs, 4 groups
    "no_query_selection": (4, {"two_stage_type": "no", "dn_number": 2, "decoder_sa_type": "ca_content",
                               "transformer_activation": "prelu", "decoder_module_seq": ["ca", "sa", "ffn"],
                               "random_refpoints_xy": True, "use_detached_boxes_dec_out": True}),
    # one backbone stage plus one extra level (8 tokens: 6 queries), queries attending to class embeddings (no
    # denoising), encoder heads shared with the decoder, a final encoder norm, classification-only encoder loss, NMS
    "label_attention": (4, {"return_interm_indices": [3], "num_feature_levels": 2, "num_queries": 6,
                            "decoder_sa_type": "ca_label",
                            "use_dn": False, "two_stage_bbox_embed_share": True, "two_stage_class_embed_share": True,
                            "pre_norm": True, "no_interm_box_loss": True, "interm_loss_coef": 0.5,
                            "nms_iou_threshold": 0.5}),
}

SWITCHES = ("use_dn", "embed_init_tgt", "dec_pred_class_embed_share", "dec_pred_bbox_embed_share")


def case_flags(name: str) -> list[str]:
    """Our command line for a case: the preset, then TINY and the case's keys as flags."""
    scales, overrides = CASES[name]
    flags = ["--config", str(ROOT / PRESETS[scales]), "--no_pretrained_backbone", "--device", "cpu"]
    for key, value in {**TINY, **overrides}.items():
        if isinstance(value, bool):
            if key in SWITCHES:
                flags.append(f"--{key}" if value else f"--no_{key}")
            elif value:
                flags.append(f"--{key}")
        elif isinstance(value, list):
            flags += [f"--{key}", *map(str, value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def parse(flags: list[str]) -> argparse.Namespace:
    from cli import check_args, get_args_parser
    from util.config import parse_args_with_config

    args = parse_args_with_config(get_args_parser(), flags)
    check_args(args)
    return args


def make_inputs() -> dict:
    """``eval_images``: two images of different sizes (a padded batch); ``train_images``: those and a third one;
    ``targets``: the three images' targets (3, 0 and 2 objects; labels < NUM_CLASSES, boxes cxcywh);
    ``sizes``: original sizes ``[2, 2]`` (h, w) of the two eval images."""
    g = torch.Generator().manual_seed(3)
    images = [torch.randn(3, 64, 48, generator=g), torch.randn(3, 40, 72, generator=g),
              torch.randn(3, 56, 56, generator=g)]
    targets = []
    for n in (3, 0, 2):
        centers = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
                        "boxes": torch.cat([centers, sizes], 1)})
    return {"eval_images": images[:2], "train_images": images, "targets": targets,
            "sizes": torch.tensor([[128, 96], [80, 144]])}


@torch.no_grad()
def perturb(model: nn.Module, seed: int = PERTURB_SEED, scale: float = 0.02) -> None:
    """Add ``scale`` * N(0, 1) noise to every floating-point state-dict entry except running variances (each shared
    tensor once), in the order of the sorted names, so that zero-initialised heads and uniform attention weights
    take part in the comparison."""
    g = torch.Generator().manual_seed(seed)
    seen = set()
    state = model.state_dict(keep_vars=True)
    for name in sorted(state):
        tensor = state[name]
        if not tensor.is_floating_point() or name.endswith("running_var") or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensor.data.add_(scale * torch.randn(tensor.shape, generator=g))


def state_names_and_shapes(model: nn.Module) -> torch.Tensor:
    """The state dict's names and shapes, one ``name:d0,d1,...`` line each, zlib-compressed into a uint8 tensor."""
    text = "\n".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in model.state_dict().items())
    return torch.frombuffer(bytearray(zlib.compress(text.encode(), 9)), dtype=torch.uint8)


def names_and_shapes(packed: torch.Tensor) -> list[str]:
    return zlib.decompress(bytes(packed.tolist())).decode().split("\n")


def init_sums(model: nn.Module) -> torch.Tensor:
    """Per state-dict entry, in order, the float64 sum of its values."""
    return torch.stack([v.double().sum() for v in model.state_dict().values()])


def flatten_outputs(prefix: str, outputs: dict) -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value.detach().clone()
        elif isinstance(value, int):
            flat[f"{prefix}{key}"] = torch.tensor(value)
        elif key == "aux_outputs":
            for i, aux in enumerate(value):
                flat.update(flatten_outputs(f"{prefix}aux{i}.", aux))
        elif key == "output_known_lbs_bboxes":
            flat.update(flatten_outputs(f"{prefix}dn.", value))
        elif isinstance(value, dict):
            flat.update(flatten_outputs(f"{prefix}{key}.", value))
    return flat


def run_case(model: nn.Module, criterion: nn.Module, postprocessor: nn.Module, use_dn: bool) -> dict:
    """Everything a case compares, for a model with its final weights (official and ours alike). The model gets
    the targets in training when denoising is on (the official training loop's rule)."""
    inputs = make_inputs()
    eval_targets = inputs["targets"][:2]
    result: dict = {}
    model.eval()
    criterion.eval()
    with torch.no_grad():
        outputs = model(inputs["eval_images"])
        result.update(flatten_outputs("eval.", outputs))
        losses = criterion(outputs, eval_targets)
        result.update({f"evalloss.{k}": torch.as_tensor(v).detach().reshape(()) for k, v in losses.items()})
        for i, r in enumerate(postprocessor(outputs, inputs["sizes"])):
            result.update({f"post{i}.{k}": v for k, v in r.items()})

    model.train()
    criterion.train()
    torch.manual_seed(DN_SEED)
    outputs = model(inputs["train_images"], inputs["targets"] if use_dn else None)
    result.update(flatten_outputs("train.", outputs))
    losses = criterion(outputs, inputs["targets"])
    result.update({f"loss.{k}": torch.as_tensor(v).detach().reshape(()) for k, v in losses.items()})
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    model.zero_grad()
    total.backward()
    named = [(k, p) for k, p in model.named_parameters() if p.grad is not None]
    result["grad_names"] = [k for k, _ in named]
    result["grad_norms"] = torch.stack([p.grad.norm() for _, p in named])
    return result


def compare(actual: dict, expected: dict, name: str) -> float:
    """Largest absolute difference between our values and the official ones (keys and integer values equal)."""
    assert sorted(actual) == sorted(expected), (name, sorted(set(actual) ^ set(expected)))
    worst, where = 0.0, ""
    our_grads = dict(zip(actual["grad_names"], actual["grad_norms"]))
    for key, e in expected.items():
        if key == "grad_names":
            continue
        a = torch.stack([our_grads[k] for k in expected["grad_names"]]) if key == "grad_norms" else actual[key]
        if not isinstance(e, torch.Tensor):
            assert a == e, (name, key)
        elif not e.is_floating_point():
            assert torch.equal(a, e), (name, key, a, e)
        elif e.numel():
            finite = torch.isfinite(e)
            assert torch.equal(finite, torch.isfinite(a)) and torch.equal(a[~finite], e[~finite]), (name, key)
            diff = (a[finite].double() - e[finite].double()).abs().max().item() if finite.any() else 0.0
            if diff > worst:
                worst, where = diff, key
    print(f"{name}: ours vs official, largest difference {worst:.3g} ({where})")
    return worst


# ---------------------------------------------------------------------------------------------------------------
# The official code (run time only)

def _cuda_to_cpu() -> None:
    """The official DINO moves its denoising tensors and zero losses with ``.cuda()`` / ``.to('cuda')``: keep them
    where they are."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    to = torch.Tensor.to

    def to_not_cuda(self, *args, **kwargs):
        if args and isinstance(args[0], str) and args[0].startswith("cuda"):
            return self
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_not_cuda


def import_official(path: Path) -> types.SimpleNamespace:
    """The official modules, with the CUDA sampling replaced by the official pure-PyTorch function and without
    ImageNet weights."""
    stub_cuda_extension()
    with official_packages(path):
        import models.dino.backbone as backbone
        import models.dino.dino as dino
        import models.dino.position_encoding as position_encoding
        from models.dino.ops.functions import ms_deform_attn_func

    use_pytorch_sampling(ms_deform_attn_func)
    backbone.is_main_process = lambda: False  # no ImageNet weights (the official loads them on the main process)
    _cuda_to_cpu()
    return types.SimpleNamespace(backbone=backbone, dino=dino, position_encoding=position_encoding, path=path)


def official_args(official: types.SimpleNamespace, scales: int, overrides: dict) -> argparse.Namespace:
    """The official config file's values (with its base), the training scripts' options, then ``overrides``."""
    config: dict = {}
    for file in ("config/DINO/coco_transformer.py", OFFICIAL_CONFIGS[scales]):
        values: dict = {}
        exec((official.path / file).read_text(), {}, values)
        values.pop("_base_", None)
        config.update(values)
    config.update(SCRIPT_OPTIONS)
    config.update(overrides)
    config.update(device="cpu", dataset_file="coco")
    return argparse.Namespace(**config)


def tiny_backbone_builder(official: types.SimpleNamespace):
    """The official backbone classes around a ResNet-18 (the official builder accepts ResNet-50/101 only)."""
    import torchvision

    def build(args):
        position_embedding = official.position_encoding.build_position_encoding(args)
        resnet = torchvision.models.resnet18(weights=None, replace_stride_with_dilation=[False, False, args.dilation],
                                             norm_layer=official.backbone.FrozenBatchNorm2d)
        channels = [64, 128, 256, 512][4 - len(args.return_interm_indices):]
        body = official.backbone.BackboneBase(resnet, args.lr_backbone > 0, channels, args.return_interm_indices)
        joiner = official.backbone.Joiner(body, position_embedding)
        joiner.num_channels = channels
        return joiner

    return build


def official_full_names(official: types.SimpleNamespace) -> dict:
    """Names and shapes of the official 4- and 5-scale models, compared with ours from the presets."""
    from models import build_model

    result = {}
    for scales in (4, 5):
        torch.manual_seed(0)
        model = official.dino.build_dino(official_args(official, scales, {}))[0]
        ours = build_model(parse(["--config", str(ROOT / PRESETS[scales]), "--no_pretrained_backbone"]))[0]
        off_state, our_state = model.state_dict(), ours.state_dict()
        assert list(off_state) == list(our_state), sorted(set(off_state) ^ set(our_state))
        assert all(v.shape == our_state[k].shape for k, v in off_state.items())
        ours.load_state_dict(off_state, strict=True)
        print(f"{scales}-scale: {len(off_state)} official state-dict entries, ours identical, strict load ok")
        result[f"state_{scales}scale"] = state_names_and_shapes(model)
    return result


def official_case(official: types.SimpleNamespace, name: str) -> dict:
    from models import build_model

    scales, overrides = CASES[name]
    args = official_args(official, scales, {**TINY, **overrides})
    our_args = parse(case_flags(name))
    official.dino.build_backbone = tiny_backbone_builder(official)
    torch.manual_seed(0)
    off_model, off_criterion, off_post = official.dino.build_dino(args)
    torch.manual_seed(0)
    our_model, our_criterion, our_post = build_model(our_args)
    off_state, our_state = off_model.state_dict(), our_model.state_dict()
    assert list(off_state) == list(our_state), sorted(set(off_state) ^ set(our_state))
    different = [k for k, v in off_state.items() if not torch.equal(v, our_state[k])]
    assert not different, f"{name}: initial weights differ: {different[:5]}"
    assert off_criterion.weight_dict == our_criterion.weight_dict, name
    result: dict = {"init_sums": init_sums(off_model), "weight_dict": dict(off_criterion.weight_dict)}

    perturb(our_model)
    off_model.load_state_dict(our_model.state_dict(), strict=True)
    our_model.load_state_dict(off_model.state_dict(), strict=True)
    expected = run_case(off_model, off_criterion, off_post["bbox"], args.use_dn)
    actual = run_case(our_model, our_criterion, our_post["bbox"], args.use_dn)
    compare(actual, expected, name)
    result.update(expected)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="clone of IDEA-Research/DINO")
    parser.add_argument("--output", type=Path, default=REFERENCE_FILE)
    cli_args = parser.parse_args()
    torch.set_num_threads(1)
    import models  # ours first, so that our packages are the ones restored after the official import

    del models
    official = import_official(cli_args.official.resolve())
    values = {"names": official_full_names(official)}
    values.update({name: pack(official_case(official, name)) for name in CASES})
    cli_args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(values, cli_args.output)
    print(f"wrote {cli_args.output} ({cli_args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
