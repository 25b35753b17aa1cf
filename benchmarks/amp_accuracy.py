"""Does a precision flag change what a preset learns? Paired training runs, one per seed and arm: a reference arm
(fp32, the default flags) against candidate arms (``--amp bf16``) and a control arm that changes only the rounding
of the same math (``--channels_last on``: other convolution kernels), which measures how far two runs drift apart
when nothing but rounding differs.

Usage: python -m benchmarks.amp_accuracy [--preset configs/demo_cpu.yaml] [--seeds 42 43 44 45 46]
           [--arm fp32= --arm bf16="--amp bf16" --arm fp32_channels_last="--channels_last on"] [--margin 0.01]
           [--jobs 2] [--threads 1] [--data data/synthetic] [--out outputs/amp_accuracy] [--no_train] [--no_write]

Each run is ``python main.py --config PRESET --seed S --eval_every 1 --auto_resume FLAGS`` into ``OUT/ARM/seedS``
with ``OMP_NUM_THREADS=THREADS`` (a CPU run with one thread repeats to the last digit), ``--jobs`` at a time; a
folder that already holds a finished run is read back, an interrupted one resumes. For each arm against the first,
prints the final AP per seed, the paired differences with their 95% interval, and the verdict of a two one-sided
tests (TOST) equivalence check at ``--margin`` ('equivalent' when the 90% interval of the mean difference lies
inside +-margin; see ``paired_summary``) and the number of seed pairs that would show equivalence with 80%
probability at the observed mean and spread. Writes the table between the amp-accuracy markers of benchmarks/RESULTS.md.
"""
import argparse
import fcntl
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scipy import stats

import cli
from benchmarks.results_section import write_section
from tools.data.synthetic import generate
from util.config import parse_args_with_config

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- amp-accuracy:begin -->", "<!-- amp-accuracy:end -->"
DEFAULT_ARMS = ["fp32=", "bf16=--amp bf16", "fp32_channels_last=--channels_last on"]


def parse_arm(text: str) -> tuple[str, list[str]]:
    """'NAME=FLAGS' -> (NAME, [flags]); NAME is a folder name, FLAGS may be empty."""
    name, sep, flags = text.partition("=")
    if not sep or not name or "/" in name:
        raise SystemExit(f"--arm {text!r}: expected NAME=FLAGS, e.g. bf16=\"--amp bf16\"")
    return name, shlex.split(flags)


def ap_by_epoch(run_dir: Path) -> list[float]:
    """bbox AP after each evaluated epoch of a run folder's log.txt, in epoch order (empty when there is none); an
    epoch logged twice (a run resumed from a checkpoint older than its log) counts once, the later line."""
    log = run_dir / "log.txt"
    if not log.is_file():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    by_epoch = {line["epoch"]: line["test_coco_eval_bbox"][0] for line in lines if "test_coco_eval_bbox" in line}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def train(preset: str, seed: int, flags: list[str], run_dir: Path, data: Path, threads: int, epochs: int) -> None:
    """One training run of ``preset`` in a child process with ``threads`` CPU threads, unless ``run_dir`` already
    holds ``epochs`` evaluated epochs once its lock is held; the output goes to ``run_dir/stdout.txt``. Refuses a
    folder that another process is training into (two runs writing one folder would interleave their logs and
    checkpoints)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"{run_dir}: another process is training into this folder; wait for it, or use "
                             "--no_train to report the finished runs only") from None
        if len(ap_by_epoch(run_dir)) >= epochs:
            return
        command = [sys.executable, "main.py", "--config", preset, "--seed", str(seed), "--eval_every", "1",
                   "--print_freq", "1000", "--auto_resume", "--coco_path", str(data), "--output_dir", str(run_dir),
                   *flags]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(run_dir / "stdout.txt", "a") as out:
            result = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        last = (run_dir / "stdout.txt").read_text().strip().splitlines()[-1:] or [""]
        raise SystemExit(f"{run_dir}: training failed (exit {result.returncode}): {last[0]} "
                         f"(whole output: {run_dir / 'stdout.txt'})")


def train_all(jobs: list[tuple[str, int, list[str], Path]], preset: str, data: Path, threads: int, epochs: int,
              workers: int) -> None:
    """Train each (arm, seed, flags, run folder) job, ``workers`` at a time; the first failure cancels the jobs
    not yet started and is raised once the running ones end."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(train, preset, seed, flags, run_dir, data, threads, epochs)
                   for _, seed, flags, run_dir in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def paired_summary(reference: list[float], candidate: list[float], margin: float, power: float = 0.8) -> dict:
    """Paired comparison of two arms' final AP over the same seeds (at least two).

    Returns the differences candidate - reference, their mean and sd, the 95% t interval of the mean, the 90% t
    interval (the TOST equivalence check at 5% on each side), the verdict and ``pairs_needed``. Verdicts:
    'equivalent' (the 90% interval inside +-margin), 'beyond the margin' (the 90% interval wholly outside it),
    'different' (the 95% interval excludes 0), else 'undecided'. ``pairs_needed``: how many pairs give the TOST
    check probability ``power`` of showing equivalence if the true difference and sd are the observed ones (None
    when the mean is at or beyond the margin)."""
    diffs = [c - r for r, c in zip(reference, candidate, strict=True)]
    n = len(diffs)
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    ci95 = (mean - stats.t.ppf(0.975, n - 1) * se, mean + stats.t.ppf(0.975, n - 1) * se)
    ci90 = (mean - stats.t.ppf(0.95, n - 1) * se, mean + stats.t.ppf(0.95, n - 1) * se)
    if -margin < ci90[0] and ci90[1] < margin:
        verdict = "equivalent"
    elif ci90[0] > margin or ci90[1] < -margin:
        verdict = "beyond the margin"
    elif ci95[0] > 0 or ci95[1] < 0:
        verdict = "different"
    else:
        verdict = "undecided"
    pairs_needed = None
    if abs(mean) < margin:
        room = margin - abs(mean)
        # at a true difference of 0 both one-sided tests can fail, so each gets half of the miss probability
        miss = (1 - power) / 2 if mean == 0 else 1 - power
        z = stats.norm.ppf(0.95) + stats.norm.ppf(1 - miss)
        pairs_needed = max(2, math.ceil((z * sd / room) ** 2))  # the t version needs at least this many
        while (stats.t.ppf(0.95, pairs_needed - 1) + stats.t.ppf(1 - miss, pairs_needed - 1)) * sd \
                / math.sqrt(pairs_needed) > room:
            pairs_needed += 1
    return {"diffs": diffs, "mean": mean, "sd": sd, "ci95": ci95, "ci90": ci90, "verdict": verdict,
            "pairs_needed": pairs_needed}


def divergence_by_epoch(reference: list[list[float]], candidate: list[list[float]]) -> list[float]:
    """Mean over seeds of |AP(candidate) - AP(reference)| after each epoch."""
    epochs = min(len(run) for run in reference + candidate)
    return [statistics.mean(abs(c[e] - r[e]) for r, c in zip(reference, candidate)) for e in range(epochs)]


def table(preset: str, seeds: list[int], arms: dict[str, list[str]], curves: dict[str, list[list[float]]],
          margin: float, machine: str) -> str:
    names = list(arms)
    finals = {name: [curve[-1] for curve in curves[name]] for name in names}
    lines = [BEGIN, "", f"`{preset}`, final bbox AP on the synthetic val images, one run per seed and arm "
             f"({machine}). Arms: "
             + "; ".join(f"{n}: `{' '.join(f) or 'defaults'}`" for n, f in arms.items()) + ".", "",
             "| arm | " + " | ".join(str(s) for s in seeds) + " | mean ± sd |",
             "| --- |" + " --- |" * (len(seeds) + 1)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{ap:.3f}" for ap in finals[name])
                     + f" | {statistics.mean(finals[name]):.3f} ± {statistics.stdev(finals[name]):.3f} |")
    reference = names[0]
    summaries = {name: paired_summary(finals[reference], finals[name], margin) for name in names[1:]}
    for name, s in summaries.items():
        lines.append(f"| {name} - {reference} | " + " | ".join(f"{d:+.3f}" for d in s["diffs"])
                     + f" | {s['mean']:+.3f} ± {s['sd']:.3f} |")
    lines += ["", f"| difference | mean | 95% interval | 90% interval | verdict at ±{margin} | pairs for 80% power |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, s in summaries.items():
        lines.append(f"| {name} - {reference} | {s['mean']:+.4f} | {s['ci95'][0]:+.3f} .. {s['ci95'][1]:+.3f} | "
                     f"{s['ci90'][0]:+.3f} .. {s['ci90'][1]:+.3f} | {s['verdict']} | "
                     f"{s['pairs_needed'] or f'none: the mean is beyond ±{margin}'} |")
    lines += ["", f"Mean |AP - AP({reference})| over the seeds after each epoch (how fast the runs drift apart):", ""]
    drifts = {name: divergence_by_epoch(curves[reference], curves[name]) for name in names[1:]}
    width = max(len(d) for d in drifts.values())
    lines += ["| arm | " + " | ".join(str(e + 1) for e in range(width)) + " |", "| --- |" + " --- |" * width]
    for name, drift in drifts.items():
        lines.append(f"| {name} | " + " | ".join(f"{d:.3f}" for d in drift) + " |")
    mean_ap = [statistics.mean(curve[e] for curve in curves[reference]) for e in range(width)]
    lines.append(f"| AP({reference}), mean | " + " | ".join(f"{ap:.3f}" for ap in mean_ap) + " |")
    return "\n".join(lines + ["", END])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser("Paired accuracy of precision flags over seeds")
    parser.add_argument("--preset", default="configs/demo_cpu.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    parser.add_argument("--arm", action="append", dest="arms", metavar="NAME=FLAGS",
                        help=f"an arm's folder name and main.py flags; the first is the reference "
                             f"(default: {' '.join(repr(a) for a in DEFAULT_ARMS)})")
    parser.add_argument("--margin", type=float, default=0.01, help="equivalence margin in AP")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--out", default="outputs/amp_accuracy")
    parser.add_argument("--no_train", action="store_true",
                        help="train nothing: report the seeds whose runs have finished in every arm")
    parser.add_argument("--no_write", action="store_true", help="print the table; leave RESULTS.md")
    options = parser.parse_args(argv)
    arms = dict(parse_arm(text) for text in options.arms or DEFAULT_ARMS)
    if len(arms) < 2:
        parser.error("--arm: give a reference and at least one arm to compare with it")
    epochs = parse_args_with_config(argparse.ArgumentParser(parents=[cli.get_args_parser()]),
                                    ["--config", options.preset]).epochs
    out = Path(options.out)

    def finished(name: str, seed: int) -> bool:
        return len(ap_by_epoch(out / name / f"seed{seed}")) >= epochs

    seeds = options.seeds
    if options.no_train:
        seeds = [seed for seed in seeds if all(finished(name, seed) for name in arms)]
    else:
        data = generate(Path(options.data), num_train=2000, num_val=200, image_size=128, seed=0).resolve()
        pending = [(name, seed, arms[name], (out / name / f"seed{seed}").resolve())
                   for name in arms for seed in seeds if not finished(name, seed)]
        train_all(pending, options.preset, data, options.threads, epochs, options.jobs)
    if len(seeds) < 2:
        parser.error(f"--seeds: a paired comparison needs at least two seeds finished in every arm, got {seeds}")
    curves = {name: [ap_by_epoch(out / name / f"seed{seed}") for seed in seeds] for name in arms}
    machine = (f"runs read back from {out}" if options.no_train else
               f"{options.threads} thread{'s' if options.threads > 1 else ''} per run, {options.jobs} at a time")
    text = table(options.preset, seeds, arms, curves, options.margin, machine)
    print(text)
    if not options.no_write:
        write_section(text, BEGIN, END, "Mixed precision and accuracy")
    return text


if __name__ == "__main__":
    main()
