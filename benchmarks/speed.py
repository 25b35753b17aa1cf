"""The official-equivalent path against the fast path: same model, batch and inputs, one process, alternating.

    python -m benchmarks.speed --preset r50_cpu [--rounds 5] [--threads 1] [--fast_flags "--channels_last on"]
    python -m benchmarks.speed --preset demo_cpu
    python -m benchmarks.speed --preset r50_gpu          (skipped without a CUDA device)
    python -m benchmarks.speed --main_py --coco_path DATA [--rounds 2] [--threads 1] -- MAIN_PY_FLAGS...

Step mode (``--preset``) builds one seeded model and gives each path its own copy: the official path is
``--official_paths`` (for-loop AdamW, attention weights computed, every loss term read every step, contiguous
backbone), the fast path the defaults plus ``--fast_flags`` (``r50_gpu``: ``--amp bf16 --compile``, so bf16 +
compile + fused AdamW + channels_last). Each round times ``--steps`` training steps (forward, set loss, backward,
clipping, update and the path's loss reads) and ``--steps`` inference passes (forward, post-processing, the
detections on the host) of each path in turn on one random batch; the medians over rounds and their ratio are
printed, with images/s and, on a GPU, peak memory per path. On a shared machine also compare ``ratio_of_fastest``
(the least disturbed round of each path) and ``median_round_ratio`` (rounds run both paths back to back).

Presets: ``r50_cpu``: configs/detr_r50.yaml (random weights), 320 px, batch 2 (the paper's 800 px takes minutes a
step on two cores); ``demo_cpu``: configs/demo_cpu.yaml (128 px, batch 8); ``r50_gpu``: configs/detr_r50.yaml, 800
px, batch 4 (one image 800 x 1066 as the paper's sizes, the others smaller).

``--main_py`` mode runs ``python main.py MAIN_PY_FLAGS --epochs 1`` twice per round, alternating the official and
the fast path (``--official_paths`` or not), each in a fresh output folder, and reports the wall time of each run,
the training epoch time from its log and the training loss after the epoch.
"""
import argparse
import copy
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import cli
from evaluation.coco_eval import results_to_cpu
from models import architecture, build_model
from run import _choose_speed_paths
from util.amp import Precision
from util.compile import compile_model
from util.config import parse_args_with_config
from util.loss_log import DeferredLosses
from util.metric_logger import MetricLogger
from util.nested_tensor import nested_tensor_from_tensor_list
from util.optimizer import build_optimizer
from util.train_step import TrainStep

PRESETS = {
    "r50_cpu": dict(config="configs/detr_r50.yaml", device="cpu", sizes=[(320, 320)] * 2, fast_flags=[]),
    "demo_cpu": dict(config="configs/demo_cpu.yaml", device="cpu", sizes=[(128, 128)] * 8, fast_flags=[]),
    "r50_gpu": dict(config="configs/detr_r50.yaml", device="cuda",
                    sizes=[(800, 1066), (800, 1000), (704, 1066), (800, 960)],
                    fast_flags=["--amp", "bf16", "--compile"]),
}


def random_batch(sizes: list[tuple[int, int]], num_classes: int, device: torch.device, seed: int = 0):
    """Images of ``sizes`` (h, w) and 1-4 random boxes each, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, h, w, generator=gen) for h, w in sizes]
    targets = []
    for h, w in sizes:
        n = int(torch.randint(1, 5, (1,), generator=gen))
        centres = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
        boxes = torch.cat([centres, torch.rand(n, 2, generator=gen) * 0.3 + 0.05], 1)
        targets.append({"labels": torch.randint(1, num_classes, (n,), generator=gen).to(device),
                        "boxes": boxes.to(device), "orig_size": torch.tensor([h, w], device=device)})
    return nested_tensor_from_tensor_list(images).to(device), targets


class SpeedPath:
    """One path: its model copy, training step, loss log and inference pass."""

    def __init__(self, name: str, base: torch.nn.Module, criterion, postprocessors, args: argparse.Namespace):
        self.name, self.args, self.criterion, self.postprocessors = name, args, criterion, postprocessors
        device = torch.device(args.device)
        self.model = copy.deepcopy(base).to(device)
        _choose_speed_paths(self.model, device, args)
        self.runner = compile_model(self.model, device) if args.compile else self.model
        optimizer = build_optimizer(architecture(args.meta_arch).param_groups(self.model, args), args.lr,
                                    args.weight_decay, args.sgd, "plain" if args.official_paths else "auto")
        self.precision = Precision(args.amp, device)
        self.step = TrainStep(self.runner, criterion, optimizer, args.clip_max_norm, precision=self.precision,
                              host_check=True if args.official_paths else None)
        self.optimizer = optimizer
        self.log = DeferredLosses(criterion.weight_dict, 0, every_step=args.official_paths)
        self.logger = MetricLogger()

    def train(self, samples, targets, steps: int) -> None:
        self.runner.train()
        for it in range(steps):
            result = self.step(samples, targets)
            self.log.add(it, result.loss_dict, self.optimizer.param_groups[0]["lr"], self.logger,
                         read_now=result.read_now)
        self.log.flush(self.logger)  # a progress line per round

    @torch.no_grad()
    def infer(self, samples, targets, steps: int) -> None:
        self.runner.eval()
        sizes = torch.stack([t["orig_size"] for t in targets])
        for _ in range(steps):
            with self.precision.autocast():
                outputs = self.runner(samples)
            results = self.postprocessors["bbox"](self.precision.to_fp32(outputs), sizes)
            if self.args.official_paths:
                [{k: v.tolist() for k, v in r.items()} for r in results]  # per image, as the official evaluator
            else:
                results_to_cpu(results)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps(preset: str, rounds: int, steps: int, warmup: int, fast_flags: list[str]) -> dict:
    spec = PRESETS[preset]
    device = torch.device(spec["device"])
    parser = cli.get_args_parser()
    common = ["--config", spec["config"], "--no_pretrained_backbone", "--device", spec["device"], "--num_classes",
              "91"]
    official_args = parse_args_with_config(parser, common + ["--official_paths"])
    fast_args = parse_args_with_config(parser, common + spec["fast_flags"] + fast_flags)
    torch.manual_seed(0)
    base, criterion, postprocessors = build_model(fast_args)
    samples, targets = random_batch(spec["sizes"], 91, device)
    paths = [SpeedPath("official", base, criterion, postprocessors, official_args),
             SpeedPath("fast", base, criterion, postprocessors, fast_args)]
    times = {(p.name, kind): [] for p in paths for kind in ("train", "infer")}
    peak = {}
    for r in range(warmup + rounds):
        for p in paths:
            for kind in ("train", "infer"):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                start = time.perf_counter()
                getattr(p, kind)(samples, targets, steps)
                _sync(device)
                if r >= warmup:
                    times[p.name, kind].append((time.perf_counter() - start) / steps)
                if device.type == "cuda":
                    peak[p.name, kind] = max(peak.get((p.name, kind), 0), torch.cuda.max_memory_allocated(device))
    batch = len(spec["sizes"])
    result = {"preset": preset, "fast_flags": " ".join(spec["fast_flags"] + fast_flags), "batch": batch,
              "threads": torch.get_num_threads(), "rounds": rounds, "steps_per_round": steps}
    for kind in ("train", "infer"):
        official = statistics.median(times["official", kind])
        fast = statistics.median(times["fast", kind])
        paired = [o / f for o, f in zip(times["official", kind], times["fast", kind])]
        result[kind] = {"official_s": round(official, 4), "fast_s": round(fast, 4), "ratio": round(official / fast, 3),
                        # on a shared machine: the fastest round of each (least disturbed) and the median of the
                        # per-round ratios (each round runs both paths back to back)
                        "ratio_of_fastest": round(min(times["official", kind]) / min(times["fast", kind]), 3),
                        "median_round_ratio": round(statistics.median(paired), 3),
                        "official_img_per_s": round(batch / official, 2), "fast_img_per_s": round(batch / fast, 2),
                        "all_official_s": [round(t, 4) for t in times["official", kind]],
                        "all_fast_s": [round(t, 4) for t in times["fast", kind]]}
        if peak:
            result[kind]["peak_mib"] = {n: round(peak[n, kind] / 2**20) for n in ("official", "fast")}
    return result


def measure_main_py(main_flags: list[str], rounds: int, threads: int | None) -> dict:
    """Alternating whole-program runs of one epoch; wall time, epoch time and training loss of each."""
    runs = {"official": [], "fast": []}
    env = None
    if threads:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch's default thread count
    for _ in range(rounds):
        for name in ("official", "fast"):
            with tempfile.TemporaryDirectory() as out:
                command = [sys.executable, "main.py", *main_flags, "--epochs", "1", "--output_dir", out]
                if name == "official":
                    command.append("--official_paths")
                start = time.perf_counter()
                subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - start
                log = json.loads((Path(out) / "log.txt").read_text().splitlines()[-1])
            runs[name].append({"wall_s": round(wall, 2), "epoch_s": round(log["train_epoch_time"], 2),
                               "train_loss": log["train_loss"]})
    summary = {"flags": " ".join(main_flags), "rounds": rounds, "threads": threads, "runs": runs}
    for key in ("wall_s", "epoch_s"):
        official = statistics.median(r[key] for r in runs["official"])
        fast = statistics.median(r[key] for r in runs["fast"])
        summary[f"{key}_ratio"] = round(official / fast, 3)
    loss_official, loss_fast = runs["official"][0]["train_loss"], runs["fast"][0]["train_loss"]
    summary["train_loss_relative_difference"] = abs(loss_fast - loss_official) / abs(loss_official)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser("official-equivalent vs fast path", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="r50_cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per path per round (step mode)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds not timed (step mode)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--fast_flags", default="", help="extra flags of the fast path, e.g. '--channels_last on'")
    parser.add_argument("--main_py", action="store_true", help="whole-program mode: the flags after -- go to main.py")
    argv = sys.argv[1:] if argv is None else argv
    main_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.main_py:
        result = measure_main_py(main_flags, args.rounds, args.threads)
    elif PRESETS[args.preset]["device"] == "cuda" and not torch.cuda.is_available():
        result = {"preset": args.preset, "skipped": "no CUDA device"}
    else:
        result = measure_steps(args.preset, args.rounds, args.steps, args.warmup, shlex.split(args.fast_flags))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
