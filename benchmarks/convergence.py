"""How fast the architectures learn on the synthetic CPU data: AP by iteration and by minute, for several presets and
seeds, on the same data.

Usage: python -m benchmarks.convergence --presets configs/demo_cpu.yaml configs/demo_cpu_deformable.yaml \\
           [--seeds 42 43] [--data data/synthetic] [--out outputs/convergence] [--speed_rounds 5] [--reuse_recorded]
           [--difficulty hard] [--data_seed 0] [--num_train 2000] [--num_val 200] [--image_size 128] [--record NAME]

The data set is generated (or kept) with tools.data.synthetic from ``--difficulty``, ``--data_seed``, the counts and
``--image_size``: the README's easy set by default, ``--difficulty hard`` the harder one, other seeds and sizes an
independently generated set. Each set keeps its own record, ``--record`` (default ``convergence`` for the default
easy set, ``convergence_hard`` for the default hard set, else built from the parameters): ``RECORD.json`` and
``RECORD.png`` beside this file and a section of benchmarks/RESULTS.md between ``<!-- RECORD:begin/end -->``.

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
DATA_DEFAULTS = {"difficulty": "easy", "data_seed": 0, "num_train": 2000, "num_val": 200, "image_size": 128}


def preset_args(preset: str, extra: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
    return parse_args_with_config(parser, ["--config", preset, *extra])


def train_run(preset: str, seed: int, data: Path, run_dir: Path, extra: list[str] = ()) -> list[dict]:
    """The run's log.txt lines (one per epoch, evaluated after each), training (or resuming) first where the log is
    not complete. ``extra``: flags after the preset's."""
    args = preset_args(preset, ["--coco_path", str(data), "--seed", str(seed), "--output_dir", str(run_dir),
                                *extra, "--eval_every", "1", "--auto_resume"])
    log = _read_log(run_dir)
    if len(log) < args.epochs:
        run(args)
        log = _read_log(run_dir)
    return log


def train_runs(preset: str, seeds: list[int], data: Path, out: Path) -> list[list[dict]]:
    """Each seed's log.txt lines (one per epoch), training first where the log is not complete."""
    return [train_run(preset, seed, data, out / f"{Path(preset).stem}_seed{seed}") for seed in seeds]


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


def data_set_suffix(options: argparse.Namespace) -> str:
    """What names the data set: "" for the default easy set, "_hard" for the default hard one, then
    ``_<parameter><value>`` for each data parameter that differs from its default."""
    suffix = "" if options.difficulty == "easy" else f"_{options.difficulty}"
    for key in ("data_seed", "num_train", "num_val", "image_size"):
        if getattr(options, key) != DATA_DEFAULTS[key]:
            suffix += f"_{key}{getattr(options, key)}"
    return suffix


def record_name(options: argparse.Namespace) -> str:
    """``--record``, or the name of the data set's record: ``convergence`` (easy), ``convergence_hard`` (hard), or
    with other parameters one built from those that differ from the defaults."""
    return options.record or "convergence" + data_set_suffix(options)


def data_folder(options: argparse.Namespace) -> Path:
    """``--data``, or data/synthetic for the default easy set, else data/synthetic_<what differs from it>."""
    return Path(options.data) if options.data else Path("data/synthetic" + data_set_suffix(options))


def data_description(options: argparse.Namespace) -> str:
    kind = "easy synthetic set" if options.difficulty == "easy" else f"{options.difficulty} synthetic set"
    return (f"{kind} (`tools.data.synthetic --difficulty {options.difficulty} --seed {options.data_seed} --num_train "
            f"{options.num_train} --num_val {options.num_val} --image_size {options.image_size}`)")


def recorded_summary(preset: str, seeds: list[int], record: Path) -> dict | None:
    """The summary ``record`` (a RECORD.json) holds for ``preset`` with as many seeds, else None."""
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


def table(summaries: list[dict], target: float, machine: str, begin: str, end: str, data: str, num_val: int) -> str:
    reference = summaries[0]["preset"]
    lines = [begin, "", f"Data: {data}. AP on the {num_val} val images after every epoch; mean ± sd over seeds. "
             f"Minutes: training iterations at each preset's median idle speed ({machine}). "
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
    return "\n".join(lines + ["", end])


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
    parser.add_argument("--data", default=None,
                        help="data folder (default data/synthetic, or data/synthetic_<difficulty> and the parameters)")
    parser.add_argument("--difficulty", default=DATA_DEFAULTS["difficulty"], choices=("easy", "hard"))
    parser.add_argument("--data_seed", type=int, default=DATA_DEFAULTS["data_seed"])
    parser.add_argument("--num_train", type=int, default=DATA_DEFAULTS["num_train"])
    parser.add_argument("--num_val", type=int, default=DATA_DEFAULTS["num_val"])
    parser.add_argument("--image_size", type=int, default=DATA_DEFAULTS["image_size"])
    parser.add_argument("--record", default=None, help="name of the record (json, png, RESULTS.md section)")
    parser.add_argument("--out", default=None, help="run folders (default outputs/<record>)")
    parser.add_argument("--speed_rounds", type=int, default=5)
    parser.add_argument("--no_write", action="store_true", help="print the table; leave RESULTS.md and the plot")
    parser.add_argument("--reuse_recorded", action="store_true",
                        help="keep the recorded AP of presets already in convergence.json (no training); re-time them")
    options = parser.parse_args(argv)
    name = record_name(options)
    data = generate(data_folder(options), num_train=options.num_train, num_val=options.num_val,
                    image_size=options.image_size, seed=options.data_seed, difficulty=options.difficulty)
    record, out = HERE / f"{name}.json", Path(options.out or f"outputs/{name}")
    recorded = ({p: recorded_summary(p, options.seeds, record) for p in options.presets} if options.reuse_recorded
                else {})
    logs = {p: train_runs(p, options.seeds, data, out) for p in options.presets if recorded.get(p) is None}
    speeds = training_speed(options.presets, options.speed_rounds)
    summaries = [with_speed(recorded[p], speeds[p]) if recorded.get(p) is not None
                 else summarise(p, logs[p], iterations_per_epoch(p, data), speeds[p]) for p in options.presets]
    target = summaries[0]["epochs"][-1]["ap"]
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = table(summaries, target, hardware(torch.device("cpu")), begin, end, data_description(options),
                 options.num_val)
    print(text)
    if not options.no_write:
        record.write_text(json.dumps(summaries, indent=1))
        heading = "Convergence on the synthetic data" + ("" if name == "convergence" else f" ({name})")
        write_section(text, begin, end, heading)
        plot(summaries, HERE / f"{name}.png")
    return summaries


if __name__ == "__main__":
    main()
