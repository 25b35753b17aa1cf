"""Speed and memory of a preset: training iterations/s, inference images/s, peak memory.

Usage: python -m benchmarks.benchmark --config configs/demo_cpu.yaml [--iters 20] [--warmup 3] [--record]
       (any main.py flag may follow, e.g. --device cuda --batch_size 4)

Measures the model alone (forward, set loss, backward, AdamW step; inference forward + post-processing) on
random images at the preset's ``--image_size`` (square) with 1-4 random boxes each, so data loading is not timed.
Peak memory is the process's peak resident set on CPU and ``torch.cuda.max_memory_allocated`` on GPU.
``--record`` appends a row to benchmarks/RESULTS.md.
"""
import argparse
import datetime
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

import cli
from models import architecture, build_model
from util.config import parse_args_with_config
from util.nested_tensor import nested_tensor_from_tensor_list
from util.optimizer import build_optimizer
from util.train_step import takes_targets

RESULTS = Path(__file__).with_name("RESULTS.md")


def random_batch(batch_size: int, size: int, num_classes: int, device: torch.device, gen: torch.Generator):
    images = [torch.randn(3, size, size, generator=gen) for _ in range(batch_size)]
    targets = []
    for _ in range(batch_size):
        n = int(torch.randint(1, 5, (1,), generator=gen))
        centres = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
        targets.append({"labels": torch.randint(1, num_classes, (n,), generator=gen).to(device),
                        "boxes": torch.cat([centres, sizes], dim=1).to(device)})
    return nested_tensor_from_tensor_list(images).to(device), targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, iters: int, warmup: int) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.num_classes is None:
        args.num_classes = 91
    model, criterion, postprocessors = build_model(args)
    model.to(device)
    optimizer = build_optimizer(architecture(args.meta_arch).param_groups(model, args), args.lr, args.weight_decay,
                                args.sgd)
    gen = torch.Generator().manual_seed(0)
    samples, targets = random_batch(args.batch_size, args.image_size, args.num_classes, device, gen)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model.train()
    for i in range(warmup + iters):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        loss_dict = criterion(model(samples, targets) if takes_targets(model) else model(samples), targets)
        loss = sum(loss_dict[k] * criterion.weight_dict[k] for k in loss_dict if k in criterion.weight_dict)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
        optimizer.step()
    _sync(device)
    train_its = iters / (time.perf_counter() - start)

    model.eval()
    sizes = torch.tensor([[args.image_size, args.image_size]] * args.batch_size, device=device)
    with torch.no_grad():
        for i in range(warmup + iters):
            if i == warmup:
                _sync(device)
                start = time.perf_counter()
            postprocessors["bbox"](model(samples), sizes)
        _sync(device)
    infer_ips = iters * args.batch_size / (time.perf_counter() - start)

    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"train_it_per_s": train_its, "train_img_per_s": train_its * args.batch_size,
            "infer_img_per_s": infer_ips, "peak_mem_mib": peak_mib}


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def main(argv=None) -> dict:
    bench = argparse.ArgumentParser(add_help=False)
    bench.add_argument("--iters", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--record", action="store_true")
    known, rest = bench.parse_known_args(argv)
    parser = argparse.ArgumentParser("DETR benchmark", parents=[cli.get_args_parser(), bench])
    args = parse_args_with_config(parser, rest + [f"--iters={known.iters}", f"--warmup={known.warmup}"])
    result = measure(args, known.iters, known.warmup)
    flags = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--record")
    row = {"date": datetime.date.today().isoformat(), "flags": flags, "device": args.device,
           "hardware": hardware(torch.device(args.device)), "torch": torch.__version__,
           "batch": args.batch_size, "image": args.image_size, **{k: round(v, 2) for k, v in result.items()}}
    print(json.dumps(row))
    if known.record:
        with RESULTS.open("a") as f:
            f.write("| {date} | `{flags}` | {hardware} | {torch} | {batch} | {image} | {train_it_per_s} | "
                    "{train_img_per_s} | {infer_img_per_s} | {peak_mem_mib} |\n".format(**row))
    return row


if __name__ == "__main__":
    main()
