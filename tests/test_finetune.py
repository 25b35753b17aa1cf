"""--finetune_from across a change of class count, for every registered architecture (conftest's
tiny_architecture_flags: a new architecture is tested without editing a list): the entries of the same shape load,
those of other shapes (class heads, denoising label embeddings) keep the new model's initialisation, the printed line
names exactly them, and training goes on; official RT-DETR files (``{"ema": {"module": ...}}``) load the same way."""
import json
import re
from pathlib import Path

import pytest
import torch

import cli
from models import ARCHITECTURES, build_model
from run import run
from tests.conftest import TINY_FLAGS, TINY_MODEL_FLAGS, tiny_architecture_flags
from util.train_step import takes_targets
from util.training_state import load_finetune_weights

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY = sorted(ARCHITECTURES)
FILE_CLASSES, RUN_CLASSES = 9, 4
# '<name> (file (9, 32) vs model (4, 32))', the name with folded indices or leaves (class_embed.{0-1}.weight)
RESHAPED_ENTRY = re.compile(r"(\S+) \(file \(([\d, ]*)\) vs model \(([\d, ]*)\)\)")


def _build(meta_arch: str, num_classes: int, seed: int):
    torch.manual_seed(seed)
    args = cli.get_args_parser().parse_args([*tiny_architecture_flags(meta_arch, TINY_MODEL_FLAGS), "--num_classes",
                                             str(num_classes)])
    cli.check_args(args)
    model, criterion, _ = build_model(args)
    return model, criterion


def _expand(name: str) -> list[str]:
    """'a.{0-2}.{w,b}' -> the six names it stands for."""
    match = re.search(r"\{([^}]*)\}", name)
    if match is None:
        return [name]
    names = []
    for alternative in match.group(1).split(","):
        first, _, last = alternative.partition("-")
        values = [str(v) for v in range(int(first), int(last) + 1)] if last else [alternative]
        for value in values:
            names += _expand(name[:match.start()] + value + name[match.end():])
    return names


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(",") if n.strip())


def _printed_reshaped(line: str) -> dict[str, tuple[tuple, tuple]]:
    """name -> (file shape, model shape) for each entry the fine-tune line names as of other shape."""
    printed = {}
    for folded, file_shape, model_shape in RESHAPED_ENTRY.findall(line):
        for name in _expand(folded):
            assert name not in printed, name
            printed[name] = (_shape(file_shape), _shape(model_shape))
    return printed


def _targets() -> list[dict]:
    """Labels below RUN_CLASSES, normalised cxcywh boxes."""
    return [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
            {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.2]])}]


def _finetune_and_check(meta_arch: str, checkpoint_of, tmp_path: Path, capsys) -> tuple[torch.nn.Module, object]:
    """Save a FILE_CLASSES model as ``checkpoint_of(state)``, load it into a RUN_CLASSES model of another seed and
    check what loaded, what kept its initialisation and what was printed; returns the model and its criterion."""
    source, _ = _build(meta_arch, FILE_CLASSES, seed=0)
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "source.pth"
    torch.save(checkpoint_of(saved), path)
    model, criterion = _build(meta_arch, RUN_CLASSES, seed=1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert set(fresh) == set(saved)
    changed = {k: (tuple(saved[k].shape), tuple(fresh[k].shape)) for k in fresh if saved[k].shape != fresh[k].shape}
    # only the class dimension differs: K (sigmoid heads) or K + 1 ("no object", a padding label) rows
    assert changed and all(f[0] - m[0] == FILE_CLASSES - RUN_CLASSES and f[1:] == m[1:] for f, m in changed.values())
    assert any(not torch.equal(fresh[k], saved[k]) for k in fresh if k not in changed)  # the seeds differ

    capsys.readouterr()
    load_finetune_weights(model, str(path))
    lines = capsys.readouterr().out.splitlines()

    after = model.state_dict()
    for key in fresh:
        expected = fresh[key] if key in changed else saved[key]
        assert torch.equal(after[key], expected), key
    assert len(lines) == 1 and lines[0].startswith(f"--finetune_from {path}: ")
    assert f"loaded {len(fresh) - len(changed)} of {len(fresh)} model entries" in lines[0]
    assert f"skipped {len(changed)} entries of other shapes" in lines[0]
    assert _printed_reshaped(lines[0]) == changed
    assert "not in the file" not in lines[0] and "unknown to the model" not in lines[0]
    return model, criterion


@pytest.mark.parametrize("meta_arch", FAMILY)
def test_finetune_to_another_class_count_loads_what_fits_and_trains(meta_arch, tmp_path, capsys):
    model, criterion = _finetune_and_check(meta_arch, lambda state: {"model": state, "epoch": 3}, tmp_path, capsys)
    model.train()
    criterion.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(2)
    images, targets = torch.rand(2, 3, 64, 64, generator=g), _targets()
    for _ in range(2):  # the second loss comes from the updated weights
        outputs = model(images, targets) if takes_targets(model) else model(images)
        losses = criterion(outputs, targets)
        loss = sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)
        assert torch.isfinite(loss) and loss.item() > 0
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()


def test_official_rtdetr_files_give_their_moving_average(tmp_path, capsys):
    """The official RT-DETR / D-FINE layout: training state beside ``ema.module``, which is what loads."""

    def official(state: dict) -> dict:
        return {"model": {k: torch.zeros_like(v) for k, v in state.items()}, "ema": {"module": state, "updates": 7},
                "last_epoch": 71}

    _finetune_and_check("rtdetrv2", official, tmp_path, capsys)


def test_run_finetunes_a_checkpoint_of_another_class_count(tiny_coco, tmp_path, capsys):
    """run.run end to end: the weights that fit arrive (learning rate 0 keeps them), one epoch trains."""
    source, _ = _build("detr", FILE_CLASSES, seed=0)
    torch.save({"model": source.state_dict()}, tmp_path / "source.pth")
    flags = [*tiny_architecture_flags("detr", TINY_FLAGS), "--coco_path", str(tiny_coco), "--epochs", "1",
             "--lr", "0", "--lr_backbone", "0", "--finetune_from", str(tmp_path / "source.pth"),
             "--output_dir", str(tmp_path / "run")]
    capsys.readouterr()
    run(cli.get_args_parser().parse_args(flags))
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--finetune_from")]
    tuned = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["model"]
    run_classes = tuned["class_embed.bias"].shape[0] - 1
    assert run_classes != FILE_CLASSES
    assert len(printed) == 1 and _printed_reshaped(printed[0]) == {
        "class_embed.weight": ((FILE_CLASSES + 1, 32), (run_classes + 1, 32)),
        "class_embed.bias": ((FILE_CLASSES + 1,), (run_classes + 1,))}
    for name, value in source.named_parameters():
        if not name.startswith("class_embed."):
            assert torch.equal(tuned[name], value.detach()), name
    log = [json.loads(line) for line in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert len(log) == 1 and torch.isfinite(torch.tensor(log[0]["train_loss"]))
