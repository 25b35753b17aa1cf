"""How fast the architectures learn on the synthetic CPU data: AP by iteration and by minute, for several presets and
seeds, on the same data.

Usage: python -m benchmarks.convergence --presets configs/demo_cpu.yaml configs/demo_cpu_deformable.yaml \\
           [--seeds 42 43] [--data data/synthetic] [--out outputs/convergence] [--speed_rounds 5] [--reuse_recorded]

For each preset and seed, trains with evaluation after every epoch (``--eval_every 1``) into
``OUT/<preset>_seed<seed>`` (an interrupted run resumes from its checkpoint; a finished one is read back). Then,
on what should be an otherwise idle machine, times each preset's training iterations (model, loss, backward and
step on random images of the preset's size, as benchmarks/benchmark.py) in ``--speed_rounds`` rounds that alternate
the presets, and takes the median, so that minutes compare presets at equal load. Writes ``convergence.json``
beside this file, a table between the convergence markers of benchmarks/RESULTS.md and
``benchmarks/convergence.png`` (AP against iterations and against minutes, mean over seeds with the spread shaded).
``--reuse_recorded``: a preset already in convergence.json with the same seeds keeps its recorded AP by epoch (no
training; its run folders may be gone), and its minutes are recomputed from this run's speed measurement, taken with
the others.
"""
import argparse
import json
import statistics
from pathlib import Path

import torch

import cli
from benchmarks.benchmark import hardware, measure
from benchmarks.results_section import write_section
from run import run
from tools.data.synthetic import generate
from util.config import parse_args_with_config

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- convergence:begin -->", "<!-- convergence:end -->"


def preset_args(preset: str, extra: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    return parse_args_with_config(parser, ["--config", preset, *extra])


def train_runs(preset: str, seeds: list[int], data: Path, out: Path) -> list[list[dict]]:
    """Each seed's log.txt lines (one per epoch), training first where the log is not complete."""
    logs = []
    for seed in seeds:
        run_dir = out / f"{Path(preset).stem}_seed{seed}"
        args = preset_args(preset, ["--coco_path", str(data), "--seed", str(seed), "--output_dir", str(run_dir),
                                    "--eval_every", "1", "--auto_resume"])
        log = _read_log(run_dir)
        if len(log) < args.epochs:
            run(args)
            log = _read_log(run_dir)
        logs.append(log)
    return logs


def _read_log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def iterations_per_epoch(preset: str, data: Path) -> int:
    """Training iterations per epoch: full batches of the preset's batch size over the training images."""
    args = preset_args(preset, ["--coco_path", str(data)])
    num_train = len(json.loads((data / "annotations" / "instances_train2017.json").read_text())["images"])
    return num_train // args.batch_size


def training_speed(presets: list[str], rounds: int) -> dict[str, float]:
    """Median training iterations/s of each preset over ``rounds`` rounds that alternate the presets."""
    samples = {p: [] for p in presets}
    for _ in range(rounds):
        for preset in presets:
            args = preset_args(preset, ["--device", "cpu"])
            samples[preset].append(measure(args, iters=10, warmup=2)["train_it_per_s"])
    return {p: statistics.median(v) for p, v in samples.items()}


def recorded_summary(preset: str, seeds: list[int]) -> dict | None:
    """The summary convergence.json holds for ``preset`` with as many seeds, else None."""
    record = HERE / "convergence.json"
    if not record.is_file():
        return None
    return next((s for s in json.loads(record.read_text()) if s["preset"] == preset and s["seeds"] == len(seeds)),
                None)


def with_speed(summary: dict, its_per_s: float) -> dict:
    """``summary`` with its minutes recomputed at ``its_per_s``."""
    epochs = [{**row, "minutes": row["iterations"] / its_per_s / 60} for row in summary["epochs"]]
    return {**summary, "its_per_s": its_per_s, "epochs": epochs}


def summarise(preset: str, logs: list[list[dict]], iters_per_epoch: int, its_per_s: float) -> dict:
    """Per evaluated epoch: iterations, minutes at the idle speed, AP and AP50 (mean and sd over seeds)."""
    epochs = min(len(log) for log in logs)
    rows = []
    for e in range(epochs):
        aps = [log[e]["test_coco_eval_bbox"][0] for log in logs]
        ap50s = [log[e]["test_coco_eval_bbox"][1] for log in logs]
        iterations = (e + 1) * iters_per_epoch
        rows.append({"epoch": e, "iterations": iterations, "minutes": iterations / its_per_s / 60,
                     "ap": statistics.mean(aps), "ap_sd": statistics.stdev(aps) if len(aps) > 1 else 0.0,
                     "ap50": statistics.mean(ap50s), "ap50_sd": statistics.stdev(ap50s) if len(ap50s) > 1 else 0.0,
                     "ap_by_seed": aps})
    measured = [sum(entry.get("train_epoch_time", float("nan")) for entry in log) / 60 for log in logs]
    return {"preset": preset, "seeds": len(logs), "iters_per_epoch": iters_per_epoch, "its_per_s": its_per_s,
            "measured_minutes": measured, "epochs": rows}


def iterations_to_reach(summary: dict, target: float) -> int | None:
    """The first evaluated iteration count at which the mean AP reaches ``target``, or None."""
    return next((row["iterations"] for row in summary["epochs"] if row["ap"] >= target), None)


def table(summaries: list[dict], target: float, machine: str) -> str:
    reference = summaries[0]["preset"]
    lines = [BEGIN, "", f"Synthetic data, AP on the 200 val images after every epoch; mean ± sd over seeds. Minutes: "
             f"training iterations at each preset's median idle speed ({machine}). "
             f"'to {target:.3f}': iterations until the mean AP first reaches the final AP of {reference}.", "",
             "| preset | seeds | it/s | final AP | final AP50 | iterations | minutes | to "
             f"{target:.3f} |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summaries:
        last = s["epochs"][-1]
        reach = iterations_to_reach(s, target) or "not reached"
        lines.append(f"| `{s['preset']}` | {s['seeds']} | {s['its_per_s']:.2f} | "
                     f"{last['ap']:.3f} ± {last['ap_sd']:.3f} | {last['ap50']:.3f} ± {last['ap50_sd']:.3f} | "
                     f"{last['iterations']} | {last['minutes']:.1f} | {reach} |")
    lines += ["", "AP by epoch (mean over seeds):", ""]
    width = max(len(s["epochs"]) for s in summaries)
    lines += ["| preset | " + " | ".join(str(e + 1) for e in range(width)) + " |",
              "| --- |" + " --- |" * width]
    for s in summaries:
        cells = [f"{row['ap']:.3f}" for row in s["epochs"]] + [""] * (width - len(s["epochs"]))
        lines.append(f"| `{Path(s['preset']).stem}` | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", END])


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in summaries:
        name = Path(s["preset"]).stem
        for ax, key in zip(axes, ("iterations", "minutes")):
            x = [row[key] for row in s["epochs"]]
            y = [row["ap"] for row in s["epochs"]]
            sd = [row["ap_sd"] for row in s["epochs"]]
            ax.plot(x, y, marker="o", markersize=3, label=f"{name} ({s['seeds']} seeds)")
            ax.fill_between(x, [a - d for a, d in zip(y, sd)], [a + d for a, d in zip(y, sd)], alpha=0.2)
    for ax, label in zip(axes, ("training iterations", "training minutes (idle 2-core CPU)")):
        ax.set_xlabel(label)
        ax.set_ylabel("bbox AP (val)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser("Convergence of presets on the synthetic data")
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--out", default="outputs/convergence")
    parser.add_argument("--speed_rounds", type=int, default=5)
    parser.add_argument("--no_write", action="store_true", help="print the table; leave RESULTS.md and the plot")
    parser.add_argument("--reuse_recorded", action="store_true",
                        help="keep the recorded AP of presets already in convergence.json (no training); re-time them")
    options = parser.parse_args(argv)
    data = generate(Path(options.data), num_train=2000, num_val=200, image_size=128, seed=0)
    recorded = {p: recorded_summary(p, options.seeds) for p in options.presets} if options.reuse_recorded else {}
    logs = {p: train_runs(p, options.seeds, data, Path(options.out)) for p in options.presets
            if recorded.get(p) is None}
    speeds = training_speed(options.presets, options.speed_rounds)
    summaries = [with_speed(recorded[p], speeds[p]) if recorded.get(p) is not None
                 else summarise(p, logs[p], iterations_per_epoch(p, data), speeds[p]) for p in options.presets]
    target = summaries[0]["epochs"][-1]["ap"]
    text = table(summaries, target, hardware(torch.device("cpu")))
    print(text)
    if not options.no_write:
        (HERE / "convergence.json").write_text(json.dumps(summaries, indent=1))
        write_section(text, BEGIN, END, "Convergence on the synthetic data")
        plot(summaries, HERE / "convergence.png")
    return summaries


if __name__ == "__main__":
    main()
