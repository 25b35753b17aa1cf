"""tools/export.py on tiny trained checkpoints: each written file, loaded back here, gives the eager model's outputs
at an image size that neither the export nor the tool's own check used; failures end in one line."""
import contextlib
import io
from pathlib import Path

import onnxruntime
import pytest
import torch

import cli
from models import build_model
from tests.conftest import TINY_FLAGS, tiny_architecture_flags
from tests.tiny_checkpoints import train_tiny
from tools import export
from tools.command_line import run_tool
from util.nested_tensor import nested_tensor_from_tensor_list

pytestmark = pytest.mark.usefixtures("one_thread")

OTHER_SIZE = (1, 3, 96, 160)  # neither the export example nor the tool's check sizes


# Exporting costs seconds per thousand graph nodes: one decoder layer and two or three feature levels (still levels
# of dynamic size) make the deformable models about half as large as tests/tiny_checkpoints.py's.
SMALLER = {"detr": [],
           "deformable_detr": ["--dec_layers", "1", "--feature_layer", "layer3", "--backbone_trainable_layers", "4",
                               "--num_feature_levels", "2"],
           "dino": ["--dec_layers", "1", "--num_feature_levels", "3"],
           "rtdetrv2": ["--dec_layers", "1"],
           "dfine": ["--dec_layers", "1"]}


@pytest.fixture(scope="module")
def checkpoints(tiny_coco, tmp_path_factory) -> dict[str, Path]:
    """Tiny trained checkpoints of the three architectures (SMALLER's flags on top of tests/tiny_checkpoints.py's)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export_runs")
    return {arch: train_tiny(tiny_coco, root / arch, arch, *SMALLER[arch]) for arch in SMALLER}


def _eager(arch: str, checkpoint: Path, images: torch.Tensor) -> list[torch.Tensor]:
    """The checkpoint's model built here from the flags it was trained with, run as the export's caller would."""
    args = cli.get_args_parser().parse_args([*tiny_architecture_flags(arch, TINY_FLAGS), "--num_classes", "12",
                                             *SMALLER[arch]])
    model, _, _ = build_model(args)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        outputs = model.eval()(nested_tensor_from_tensor_list(list(images)))
    return [outputs["pred_logits"], outputs["pred_boxes"]]


def _export(checkpoint: Path, fmt: str, output: Path, *flags: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        return export.main(["--resume", str(checkpoint), "--format", fmt, "--output", str(output), *flags])


@pytest.fixture
def loaded_back(monkeypatch) -> list:
    """What the tool loaded back from the written file (an onnxruntime session, a TorchScript module or a
    torch.export program), to run it here at another size without loading the file twice."""
    loaded = []

    def keep(load):
        def wrapper(*args, **kwargs):
            loaded.append(load(*args, **kwargs))
            return loaded[-1]
        return wrapper

    monkeypatch.setattr(onnxruntime, "InferenceSession", keep(onnxruntime.InferenceSession))
    monkeypatch.setattr(torch.jit, "load", keep(torch.jit.load))
    monkeypatch.setattr(torch.export, "load", keep(torch.export.load))
    return loaded


def _assert_close(got, expected):
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=0, atol=export.DEFAULT_TOLERANCE)


@pytest.mark.parametrize("arch", ["detr", "deformable_detr"])
def test_onnx_runs_in_onnxruntime_like_the_eager_model(checkpoints, tmp_path, loaded_back, arch):
    output = tmp_path / "model.onnx"
    assert _export(checkpoints[arch], "onnx", output) <= export.DEFAULT_TOLERANCE
    session, = loaded_back
    assert output.is_file() and [i.name for i in session.get_inputs()] == ["images"]
    images = torch.rand(OTHER_SIZE, generator=torch.Generator().manual_seed(1))
    got = [torch.from_numpy(y) for y in session.run(None, {"images": images.numpy()})]
    _assert_close(got, _eager(arch, checkpoints[arch], images))


def test_torchscript_of_detr_is_scripted_and_matches_the_eager_model(checkpoints, tmp_path, loaded_back):
    output = tmp_path / "model.pt"
    assert _export(checkpoints["detr"], "torchscript", output) == 0.0
    program, = loaded_back
    assert "prim::If" in str(program.graph) or "prim::Loop" in str(program.inlined_graph)  # scripted, not traced
    images = torch.rand(OTHER_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _assert_close(program(images), _eager("detr", checkpoints["detr"], images))


@pytest.mark.parametrize("arch", ["deformable_detr", "dino"])
def test_exported_programs_match_the_eager_model(checkpoints, tmp_path, loaded_back, arch):
    # (DETR's program is the first stage of its ONNX export above)
    output = tmp_path / "model.pt2"
    assert _export(checkpoints[arch], "exported_program", output) <= export.DEFAULT_TOLERANCE
    program, = loaded_back
    assert output.is_file()
    images = torch.rand(OTHER_SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _assert_close(program.module()(images), _eager(arch, checkpoints[arch], images))


@pytest.mark.parametrize("arch", ["rtdetrv2", "dfine"])
def test_real_time_models_export_their_deployed_form_at_their_fixed_size(arch, checkpoints, tmp_path, loaded_back):
    """RT-DETRv2 and D-FINE: exported after deploy() (RepVGG / VGG blocks folded; D-FINE's weighting function
    stored, the heads it never runs in evaluation dropped) at --eval_spatial_size (64 x 64 here), checked by
    onnxruntime against the eager, undeployed model on another image of that size."""
    output = tmp_path / "model.onnx"
    assert _export(checkpoints[arch], "onnx", output) <= export.DEFAULT_TOLERANCE
    session, = loaded_back
    assert [list(i.shape) for i in session.get_inputs()] == [[1, 3, 64, 64]]
    images = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(4))
    got = [torch.from_numpy(y) for y in session.run(None, {"images": images.numpy()})]
    _assert_close(got, _eager(arch, checkpoints[arch], images))


def _one_error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert run_tool(export.main, argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_a_check_above_the_tolerance_fails_and_keeps_the_file(checkpoints, tmp_path, capsys, monkeypatch):
    real_load = torch.jit.load

    def off_by_a_little(path, map_location=None):  # an export whose outputs are 1e-3 off
        program = real_load(path, map_location=map_location)
        return lambda x: [y + 1e-3 for y in program(x)]

    monkeypatch.setattr(torch.jit, "load", off_by_a_little)
    output = tmp_path / "model.pt"
    line = _one_error_line(capsys, ["--resume", str(checkpoints["detr"]), "--format", "torchscript", "--output",
                                    str(output)])
    assert "differ from the eager model's by 0.001" in line and "--tolerance 0.0001" in line
    assert output.is_file()


def test_an_exporter_failure_is_one_line_naming_the_format_and_model(checkpoints, tmp_path, capsys, monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::example\n\nlong explanation\nTraceback ...")

    monkeypatch.setattr(torch.export, "export", fails)
    line = _one_error_line(capsys, ["--resume", str(checkpoints["dino"]), "--format", "exported_program",
                                    "--output", str(tmp_path / "model.pt2")])
    assert line == ("error: --format exported_program: cannot export dino: RuntimeError: Unsupported operator "
                    "aten::example")
    line = _one_error_line(capsys, ["--resume", str(checkpoints["detr"]), "--format", "exported_program",
                                    "--output", str(tmp_path / "model.onnx")])
    assert "ending in .pt2" in line
