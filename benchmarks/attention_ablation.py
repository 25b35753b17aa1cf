"""Backbone attention ablation on the synthetic dataset: train the CPU demo preset once per block (same seed,
same schedule), then record AP, AP50, parameters, GFLOPs and speed.

Usage: python -m benchmarks.attention_ablation [--preset configs/demo_cpu.yaml] [--blocks none gc ca ...]
       [--seeds 42 43] [--epochs 16 --lr_drop 12] [--data data/synthetic] [--out outputs/ablation]

Writes the table between the ablation markers of benchmarks/RESULTS.md and a plot of AP against GFLOPs and training
speed to benchmarks/attention_ablation.png, both updated after every block (for another ``--preset`` than DETR's
demo: markers, JSON and plot named after the preset, e.g. ``attention_ablation_demo_cpu_rtdetrv2.json``). Each run
of DETR's preset takes about 9 minutes on 2 CPU cores. The results of every seed are kept in the JSON record
(benchmarks/attention_ablation.json for DETR's): rerunning skips the seeds already recorded with the same schedule,
so an interrupted ablation continues and adding seeds trains only the new ones; a seed whose run folder
(``OUT/<block>_seed<seed>``) already holds a finished run (e.g. trained by ``python main.py --config
configs/demo_cpu.yaml --backbone_attn BLOCK --seed SEED --print_freq 1000 --output_dir OUT/BLOCK_seedSEED`` in
parallel jobs) is read back instead of trained. ``--remeasure_cost`` re-times the blocks (speeds are only
comparable when taken on an otherwise idle machine).
"""
import argparse
import json
import shutil
import statistics
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import cli
from benchmarks.benchmark import hardware, measure
from benchmarks.results_section import write_section
from models import build_model
from models.attention import ATTENTION
from models.attention_weights import set_need_weights
from run import run
from tools.data.synthetic import generate
from util.config import parse_args_with_config

HERE = Path(__file__).resolve().parent
PRESET = HERE.parent / "configs" / "demo_cpu.yaml"
COST_KEYS = ("params", "gflops", "train_img_per_s", "infer_img_per_s")


class Ablation:
    """Where one preset's ablation keeps its results: the JSON record, the plot and the RESULTS.md markers (DETR's
    demo preset keeps the original names)."""

    def __init__(self, preset: Path):
        self.preset = Path(preset)
        suffix = "" if self.preset.name == PRESET.name else f"_{self.preset.stem}"
        self.record = HERE / f"attention_ablation{suffix}.json"
        self.plot = HERE / f"attention_ablation{suffix}.png"
        marker = "attention-ablation" + suffix.replace("_", "-")
        self.begin, self.end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"


ABLATION = Ablation(PRESET)


def preset_args(block: str, extra: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    return parse_args_with_config(parser, ["--config", str(ABLATION.preset), "--backbone_attn", block, *extra])


def gflops(args: argparse.Namespace) -> float:
    """Forward GFLOPs of one square image at ``--image_size`` (multiply-adds counted as 2 FLOPs). The attention
    layers take the weight-computing path, whose matrix products the counter sees (it does not count the fused
    scaled_dot_product_attention kernel on the CPU); the FLOPs are the same."""
    model, _, _ = build_model(args)
    model.eval()
    set_need_weights(model, True)
    with FlopCounterMode(display=False) as counter:  # (its module tracker needs autograd on)
        model([torch.rand(3, args.image_size, args.image_size)])
    return counter.get_total_flops() / 1e9


def finished_run(run_dir: Path, epochs: int) -> tuple[float, float] | None:
    """(AP, AP50) of a run folder whose log.txt has all ``epochs`` epochs and a final evaluation, else None."""
    log = run_dir / "log.txt"
    if not log.is_file():
        return None
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if len(lines) < epochs or "test_coco_eval_bbox" not in lines[-1]:
        return None
    return lines[-1]["test_coco_eval_bbox"][0], lines[-1]["test_coco_eval_bbox"][1]


def run_block(block: str, seeds: list[int], common: list[str], out: Path, previous: dict | None = None) -> dict:
    """Train ``block`` once per seed (reusing the seeds of ``previous``, an earlier row with the same schedule, and
    finished run folders)."""
    known = {}
    if previous is not None:
        known = {s: (a, a50) for s, a, a50 in zip(previous["seeds"], previous["ap"], previous["ap50"])}
    aps, ap50s = [], []
    for seed in seeds:
        run_dir = out / f"{block}_seed{seed}"
        args = preset_args(block, [*common, "--seed", str(seed), "--output_dir", str(run_dir)])
        result = known.get(seed) or finished_run(run_dir, args.epochs)
        if result is None:
            shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted earlier run of this block starts over
            stats = run(args)
            result = stats["coco_eval_bbox"][0], stats["coco_eval_bbox"][1]
        aps.append(result[0])
        ap50s.append(result[1])
    costs = {k: previous[k] for k in COST_KEYS} if previous is not None else cost(block, common)
    notes = {k: previous[k] for k in ("note",) if previous is not None and k in previous}
    return {"block": block, "seeds": seeds, "ap": aps, "ap50": ap50s, **costs, **notes}


def cost(block: str, common: list[str]) -> dict:
    """Trainable parameters, GFLOPs and training/inference images/s of the preset with ``block``."""
    args = preset_args(block, common)
    args.num_classes = 12
    model, _, _ = build_model(args)
    speed = measure(args, iters=20, warmup=3)
    return {"params": sum(p.numel() for p in model.parameters() if p.requires_grad), "gflops": gflops(args),
            "train_img_per_s": speed["train_img_per_s"], "infer_img_per_s": speed["infer_img_per_s"]}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: list[dict], command: str) -> str:
    lines = [ABLATION.begin,
             f"Each row: `python -m benchmarks.attention_ablation --blocks BLOCK --seeds SEEDS {command}` on "
             f"{hardware(torch.device('cpu'))}, torch {torch.__version__}; AP and AP50 are mean ± sd over the seeds "
             "listed where several; costs re-measured on an idle machine with `--remeasure_cost`.", "",
             "| block | seeds | AP | AP50 | params | GFLOPs (128 px) | train img/s | infer img/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        seeds = " ".join(str(seed) for seed in r["seeds"])
        lines.append(f"| {r['block']} | {seeds} | {_mean_sd(r['ap'])} | {_mean_sd(r['ap50'])} | {r['params']:,} | "
                     f"{r['gflops']:.4f} | {r['train_img_per_s']:.1f} | {r['infer_img_per_s']:.1f} |")
    return "\n".join(lines + ["", f"![AP against cost]({ABLATION.plot.name})", ABLATION.end])


def write_results(rows: list[dict], command: str) -> None:
    write_section(table(rows, command), ABLATION.begin, ABLATION.end,
                  f"Backbone attention ablation (synthetic data, {ABLATION.preset.name})")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "gflops", "GFLOPs per 128 px image"),
                           (axes[1], "train_img_per_s", "training images/s (2 CPU cores)")):
        for r in rows:
            ap = statistics.mean(r["ap"])
            spread = statistics.stdev(r["ap"]) if len(r["ap"]) > 1 else 0.0
            ax.errorbar(r[key], ap, yerr=spread, fmt="o", capsize=3)  # bars: sd over seeds
            ax.annotate(r["block"], (r[key], ap), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(label)
        ax.set_ylabel("bbox AP (val)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{ABLATION.preset.name} with backbone attention blocks (bars: sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=str(PRESET), help="the CPU demo preset the blocks are added to")
    parser.add_argument("--blocks", nargs="+", default=["none", *ATTENTION])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's schedule")
    parser.add_argument("--lr_drop", type=int, default=None)
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--out", default="outputs/ablation")
    parser.add_argument("--remeasure_cost", action="store_true",
                        help="measure parameters, GFLOPs and speeds again for the blocks already trained (run it on an "
                             "otherwise idle machine: speeds taken while other work shared the cores are too low)")
    args = parser.parse_args(argv)
    global ABLATION
    ABLATION = Ablation(Path(args.preset))
    data = generate(args.data, num_train=2000, num_val=200, image_size=128, seed=0)
    common = ["--coco_path", str(data), "--print_freq", "1000"]
    for flag in ("epochs", "lr_drop"):
        if getattr(args, flag) is not None:
            common += [f"--{flag}", str(getattr(args, flag))]
    out = Path(args.out)
    record = ABLATION.record
    done = {r["block"]: r for r in json.loads(record.read_text())} if record.is_file() else {}
    preset = "" if ABLATION.preset.name == PRESET.name else f" --preset {args.preset}"
    command = f"--data {args.data} --out {args.out}{preset}" + "".join(
        f" --{flag} {getattr(args, flag)}" for flag in ("epochs", "lr_drop") if getattr(args, flag) is not None)
    rows = []
    for block in args.blocks:
        previous = done.get(block)
        if previous is not None and previous["seeds"] == args.seeds and previous.get("common") == common:
            if args.remeasure_cost:
                previous.update(cost(block, common))
                record.write_text(json.dumps(list({**done, block: previous}.values()), indent=1))
            rows.append(previous)
            continue
        same_schedule = previous if previous is not None and previous.get("common") == common else None
        rows.append({**run_block(block, args.seeds, common, out, same_schedule), "common": common})
        everything = list({**done, **{r["block"]: r for r in rows}}.values())
        record.write_text(json.dumps(everything, indent=1))
        write_results(everything, command)
        plot(everything, ABLATION.plot)
    if args.remeasure_cost:
        everything = list({**done, **{r["block"]: r for r in rows}}.values())
        write_results(everything, command)
        plot(everything, ABLATION.plot)
    print(table(rows, command))
    return rows


if __name__ == "__main__":
    main()
