"""The repository runs beside other packages named ``datasets``, ``models``, ``util`` ... (Hugging Face's datasets is
in most ML environments) and claims no top-level names outside itself: the README's environment does not install
it, commands run from its root, and torch.hub loads it even after same-named packages were imported."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAND_IN_NAMES = ("datasets", "models", "util", "cli", "tools", "evaluation", "benchmarks")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    """A folder of packages with this repository's top-level names, each marking itself as a stand-in."""
    folder = tmp_path_factory.mktemp("stand_ins")
    for name in STAND_IN_NAMES:
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f"STAND_IN = {name!r}\n")
    return folder


def _run(args: list[str], stand_ins: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(stand_ins), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _command_line_modules() -> list[str]:
    """Every module of tools/ and benchmarks/ that runs as a program (``python -m tools.x``)."""
    modules = []
    for folder in ("tools", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if 'if __name__ == "__main__":' in path.read_text():
                modules.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return modules


def test_the_stand_ins_would_hide_this_repository_elsewhere(stand_ins, tmp_path):
    """Outside the repository the stand-ins win: the environment has no installed copy of ours."""
    done = _run(["-c", "import datasets, models, util; print(datasets.STAND_IN, models.STAND_IN, util.STAND_IN)"],
                stand_ins, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == ["datasets", "models", "util"], done.stderr


def test_main_help_beside_stand_ins(stand_ins):
    done = _run(["main.py", "--help"], stand_ins)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--meta_arch" in done.stdout and "--coco_path" in done.stdout


def test_every_tools_help_beside_stand_ins(stand_ins):
    """``python -m <module> --help`` of every program under tools/ and benchmarks/, run in one process (each as
    ``__main__``), with the stand-ins first on PYTHONPATH."""
    modules = _command_line_modules()
    assert "tools.predict" in modules and "tools.export" in modules and "benchmarks.convergence" in modules
    script = textwrap.dedent(f"""
        import contextlib, io, runpy, sys, warnings
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: a module already imported by an earlier one
        failed = []
        for module in {modules!r}:
            sys.argv = [module, "--help"]
            printed = io.StringIO()
            try:
                with contextlib.redirect_stdout(printed):
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                failed.append((module, "returned without exiting"))
            except SystemExit as stop:
                if stop.code not in (0, None) or "usage:" not in printed.getvalue():
                    failed.append((module, stop.code, printed.getvalue()[-300:]))
        import datasets, models, util
        assert not hasattr(datasets, "STAND_IN") and not hasattr(models, "STAND_IN"), "a stand-in was imported"
        print("FAILED", failed)
    """)
    done = _run(["-c", script], stand_ins)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "FAILED []", done.stdout[-3000:]


def test_hub_load_after_same_named_packages_were_imported(stand_ins, tmp_path):
    """torch.hub.load(source="local") from another folder, after the stand-ins were imported: our model builds and
    detects, and the caller's ``datasets``/``models``/``util`` are still theirs afterwards."""
    script = textwrap.dedent(f"""
        import datasets, models, util
        import torch
        model, postprocess = torch.hub.load({str(REPO)!r}, "detr_resnet50", source="local", pretrained=False,
                                            return_postprocessor=True)
        with torch.no_grad():
            out = model.eval()(torch.rand(1, 3, 64, 64))
        (result,) = postprocess(out, torch.tensor([[64, 64]]))
        assert result["boxes"].shape == (100, 4)
        dino = torch.hub.load({str(REPO)!r}, "dino_resnet50_4scale", source="local", num_classes=5)
        assert dino.class_embed[0].out_features == 5
        import sys
        assert sys.modules["datasets"].STAND_IN == "datasets" and models.STAND_IN == "models"
        import util as again
        assert again.STAND_IN == "util"
        print("ok")
    """)
    done = _run(["-c", script], stand_ins, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
