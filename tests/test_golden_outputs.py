"""Pinned numbers: outputs, losses, gradients and a short training run of seeded tiny models, compared with values
saved in ``tests/golden/detr.pt``.

They were written before the code was reorganised and guard every later move: a refactoring must not change a
single number. When a change is meant to alter the numbers, regenerate the file and say why in the commit::

    .venv/bin/python -m tests.test_golden_outputs --write

The tolerance covers only floating-point differences between CPU instruction sets (the values are bit-equal on the
machine that wrote them). Two epochs of float32 training amplify such differences to a few 1e-3 (Hungarian matches
flip), so the training run goes through one subprocess with CPU-independent numerics (:data:`PORTABLE_NUMERICS`):
MKL's reproducible mode, ATen's baseline kernels and oneDNN off.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MKL_CBWR", "COMPATIBLE")  # as tests/conftest.py, for ``--write`` run as a script

import pytest  # noqa: E402
import torch  # noqa: E402

from tools.reference.common import pack, unpack  # noqa: E402

GOLDEN_FILE = Path(__file__).parent / "golden" / "detr.pt"
NUM_CLASSES = 6

TINY = [
    "--backbone", "resnet18", "--no_pretrained_backbone", "--backbone_norm", "bn", "--backbone_trainable_layers", "5",
    "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "64",
    "--num_queries", "8", "--dropout", "0", "--device", "cpu", "--num_classes", str(NUM_CLASSES),
]

# case name -> extra flags on top of TINY
CASES = {
    "detr": [],
    "detr_dropout": ["--dropout", "0.1"],
    "detr_pre_norm_layer3": ["--pre_norm", "--feature_layer", "layer3",
                             "--backbone_trainable_layers", "4"],
    "query_groups": ["--query_groups", "3"],
    "masks": ["--masks", "--feature_layer", "layer3", "--backbone_trainable_layers", "4", "--hidden_dim", "64",
              "--nheads", "8"],
    "attention_gc": ["--backbone_attn", "gc"],
    "attention_nl": ["--backbone_attn", "nl"],
    "learned_position": ["--position_embedding", "learned", "--no_aux_loss"],
}


def _parse(flags: list[str]) -> argparse.Namespace:
    from cli import get_args_parser

    return get_args_parser().parse_args(flags)


def _inputs():
    g = torch.Generator().manual_seed(7)
    images = [torch.randn(3, 64, 48, generator=g), torch.randn(3, 40, 72, generator=g),
              torch.randn(3, 56, 56, generator=g)]
    targets = []
    for n in (3, 2, 0):  # the last image has no objects
        centers = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(1, NUM_CLASSES, (n,), generator=g),
                        "boxes": torch.cat([centers, sizes], 1)})
    for t, img in zip(targets, images):
        t["masks"] = torch.rand(len(t["labels"]), *img.shape[1:], generator=g) > 0.5
        t["orig_size"] = torch.as_tensor([img.shape[1] * 2, img.shape[2] * 2])
        t["size"] = torch.as_tensor(img.shape[1:])
    return images, targets


def _flat(prefix: str, outputs: dict) -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value.detach().clone()
        elif key == "aux_outputs":
            for i, aux in enumerate(value):
                flat.update(_flat(f"{prefix}aux{i}.", aux))
    return flat


def run_case(name: str, official_paths: bool = False) -> dict[str, torch.Tensor]:
    """Every number the case pins: state-dict shapes, eval and train outputs, losses, gradient norms, matches and
    post-processed boxes. ``official_paths``: every attention layer computes its weights, as the official code does
    (the pinned values were written so); by default inference runs through scaled_dot_product_attention."""
    from models import build_model
    from models.attention_weights import set_need_weights

    torch.manual_seed(0)
    args = _parse(TINY + CASES[name])
    model, criterion, postprocessors = build_model(args)
    set_need_weights(model, official_paths)
    images, targets = _inputs()
    state = model.state_dict()
    result = {"state_shapes": {k: list(v.shape) for k, v in state.items()},
              "init_sums": torch.stack([v.double().sum() for v in state.values() if v.is_floating_point()])}

    model.eval()
    with torch.no_grad():
        eval_out = model(images)
    result.update(_flat("eval.", eval_out))
    sizes = torch.stack([t["orig_size"] for t in targets])
    for i, r in enumerate(postprocessors["bbox"](eval_out, sizes)):
        result.update({f"post{i}.{k}": v for k, v in r.items()})

    model.train()
    torch.manual_seed(1)
    train_out = model(images)
    result.update(_flat("train.", train_out))
    losses = criterion(train_out, targets)
    result.update({f"loss.{k}": v.detach() for k, v in losses.items()})
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    total.backward()
    with_grad = [(k, p) for k, p in model.named_parameters() if p.grad is not None]
    result["grad_names"] = [k for k, _ in with_grad]
    result["grad_norms"] = torch.stack([p.grad.norm() for _, p in with_grad])
    without_aux = {k: v for k, v in train_out.items() if k != "aux_outputs"}
    for i, (src, tgt) in enumerate(criterion.match(without_aux, targets)):
        result[f"match{i}.src"], result[f"match{i}.tgt"] = src, tgt
    return result


# Environment of the training subprocess: the same kernels, hence the same bits, on every x86-64 CPU (MKL's
# conditional-numerical-reproducibility mode; ATen's kernels compiled for the baseline instruction set, not the
# AVX2/AVX-512 ones picked at run time). oneDNN picks its convolution kernels and blocking by CPU, so the
# subprocess turns it off (convolutions then go through ATen and MKL).
PORTABLE_NUMERICS = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}


def run_training(tmp_dir: Path, extra_flags: tuple[str, ...] = ("--official_paths",)) -> dict[str, torch.Tensor]:
    """:func:`train_here` in a subprocess under :data:`PORTABLE_NUMERICS`; its log's numbers."""
    result_file = tmp_dir / "training.pt"
    command = [sys.executable, "-m", "tests.test_golden_outputs", "--train", str(tmp_dir), *extra_flags]
    env = {**os.environ, **PORTABLE_NUMERICS}
    done = subprocess.run(command, cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return torch.load(result_file, weights_only=True)


def train_here(tmp_dir: Path, extra_flags: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Two epochs of ``run.run`` on a small synthetic dataset, evaluating after each: the log's numbers. The pinned
    log was written with ``--official_paths`` (the official code's kernels: the same numbers bit for bit)."""
    from run import run
    from tools.data.synthetic import generate

    coco = generate(tmp_dir / "data", num_train=16, num_val=6, image_size=64, seed=3)
    flags = [f for f in TINY if f not in ("--num_classes", str(NUM_CLASSES))]
    args = _parse(flags + ["--coco_path", str(coco), "--epochs", "2", "--batch_size", "4", "--image_size", "64",
                           "--num_workers", "0", "--print_freq", "100", "--lr", "3e-4", "--lr_backbone", "3e-4",
                           "--output_dir", str(tmp_dir / "out"), *extra_flags])
    run(args)
    log = [json.loads(line) for line in (tmp_dir / "out" / "log.txt").read_text().splitlines()]
    result = {}
    for entry in log:
        entry.pop("train_epoch_time")  # a duration, not a pinned number
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                result[f"log{entry['epoch']}.{key}"] = torch.tensor(float(value), dtype=torch.float64)
            elif isinstance(value, list):
                result[f"log{entry['epoch']}.{key}"] = torch.tensor(value, dtype=torch.float64)
    return result


def _compare(actual: dict, expected: dict) -> None:
    expected = unpack(expected)
    assert sorted(actual) == sorted(expected), (sorted(set(actual) ^ set(expected)))[:20]
    for key in expected:
        a, e = actual[key], expected[key]
        if not isinstance(e, torch.Tensor):
            assert a == e, key
        elif e.dtype in (torch.int64, torch.bool, torch.int32):
            assert torch.equal(a, e), key
        else:
            torch.testing.assert_close(a.to(e.dtype), e, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN_FILE, weights_only=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_tiny_models_reproduce_the_pinned_numbers(name, golden):
    _compare(run_case(name), golden[name])


def test_training_run_reproduces_the_pinned_log(golden, tmp_path):
    _compare(run_training(tmp_path), golden["training"])


def test_fast_paths_train_as_the_official_paths_up_to_rounding(golden, tmp_path):
    """The defaults (fused AdamW, scaled_dot_product_attention at evaluation, deferred loss reads) give the pinned
    log of the official paths within the comparison's tolerance (measured: at most 3e-6 relative under the
    subprocess's numerics)."""
    _compare(run_training(tmp_path, extra_flags=()), golden["training"])


def _write() -> None:
    import tempfile

    torch.set_num_threads(2)
    values = {name: pack(run_case(name, official_paths=True)) for name in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        values["training"] = pack(run_training(Path(tmp)))
    GOLDEN_FILE.parent.mkdir(exist_ok=True)
    torch.save(values, GOLDEN_FILE)
    print(f"wrote {GOLDEN_FILE} ({GOLDEN_FILE.stat().st_size} bytes)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train"] and len(sys.argv) > 2:  # run_training's subprocess
        torch.set_num_threads(2)
        torch.backends.mkldnn.enabled = False
        out_dir = Path(sys.argv[2])
        torch.save(train_here(out_dir, tuple(sys.argv[3:])), out_dir / "training.pt")
    elif sys.argv[1:] == ["--write"]:
        _write()
    else:
        sys.exit("usage: python -m tests.test_golden_outputs --write")
