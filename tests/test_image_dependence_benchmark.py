"""benchmarks/image_dependence.py: a model that cannot see the image predicts the same boxes for every image."""
import statistics

import pytest
import torch

import cli
from benchmarks.image_dependence import box_spreads, main
from models import build_model
from util.config import dump_config


def _run_folder(folder, args, blind: bool):
    torch.manual_seed(0)
    model, _, _ = build_model(args)
    if blind:  # the projection from backbone features to the transformer outputs zeros: only positions remain
        torch.nn.init.zeros_(model.input_proj.weight)
        torch.nn.init.zeros_(model.input_proj.bias)
    folder.mkdir()
    dump_config(cli.get_args_parser(), args, folder / "config.yaml")
    torch.save({"model": model.state_dict()}, folder / "checkpoint.pth")
    return folder


def test_blind_model_has_no_spread_over_images_and_a_seeing_one_has(tiny_args, tiny_coco, tmp_path):
    args = tiny_args(tiny_coco, "--num_queries", "8")  # tiny_coco's val images are all 64 x 64: no padding
    blind = box_spreads(_run_folder(tmp_path / "blind", args, blind=True), num_images=6)
    seeing = box_spreads(_run_folder(tmp_path / "seeing", args, blind=False), num_images=6)
    assert blind[0] < 1e-6 and seeing[0] > 1e-4


def test_spreads_are_sample_deviations_over_images_and_over_the_inference_queries(tiny_args, tiny_coco, tmp_path,
                                                                                    monkeypatch):
    import benchmarks.image_dependence as image_dependence

    class Anchors(torch.nn.Module):
        """Box (0.1 q + 0.01 n) for query q of image n; 12 queries, of which inference reads the first 8."""

        def forward(self, samples):
            n = samples.tensors.shape[0]
            boxes = 0.1 * torch.arange(12.0)[None, :, None] + 0.01 * torch.arange(float(n))[:, None, None]
            return {"pred_boxes": boxes.expand(n, 12, 4)}

    monkeypatch.setattr(image_dependence, "build_model", lambda args: (Anchors(), None, None))
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda self, state: None)
    folder = _run_folder(tmp_path / "anchors", tiny_args(tiny_coco, "--num_queries", "8"), blind=False)
    over_images, over_queries = box_spreads(folder, num_images=5)
    assert over_images == pytest.approx(statistics.stdev([0.01 * n for n in range(5)]))
    assert over_queries == pytest.approx(statistics.stdev([0.1 * q for q in range(8)]))


def test_too_few_images_and_folders_without_a_run_are_one_line_errors(tmp_path, capsys):
    for argv, named in ((["--runs", str(tmp_path), "--images", "1"], "--images"),
                        (["--runs", str(tmp_path)], "config.yaml or checkpoint.pth")):
        with pytest.raises(SystemExit):
            main([*argv, "--no_write"])
        assert named in capsys.readouterr().err
