"""What makes the hard synthetic set hard for a preset: the preset trained on the hard set, on the hard set with
groups of its properties switched off (``tools.data.synthetic --hard_without``), and with recipe changes, for
several seeds, with AP after every epoch.

Usage: python -m benchmarks.hard_data_ablation [--preset configs/demo_cpu_deformable.yaml] [--seeds 42 43]
           [--variants hard without_all ...] [--out outputs/hard_ablation]

Each variant is a data set (the hard set, 2,000 train / 200 val images, seed 0, less the properties it switches
off; written to ``data/synthetic_hard`` or ``data/synthetic_hard_<variant>``) and extra training flags after the
preset's. Runs go to ``OUT/<preset stem>/<variant>_seed<seed>``; a finished run is read back, an interrupted one
resumes, so runs may be trained beforehand in parallel jobs with the same flags (``python main.py --config PRESET
--coco_path DATA --seed SEED --output_dir DIR FLAGS``). Results of every preset, variant and seed are kept in
benchmarks/hard_data_ablation.json; the table of all of them goes between the hard-data-ablation markers of
benchmarks/RESULTS.md.
"""
import argparse
import statistics
from pathlib import Path

from benchmarks.convergence import iterations_per_epoch, train_run
from benchmarks.results_section import RESULTS, update_record
from tools.data.synthetic import HARD_DRAWING_PROPERTIES, HARD_PROPERTIES, HARD_SCENE_PROPERTIES, generate

HERE = Path(__file__).resolve().parent
RECORD = HERE / "hard_data_ablation.json"
BEGIN, END = "<!-- hard-data-ablation:begin -->", "<!-- hard-data-ablation:end -->"
LONGER = ["--epochs", "8", "--lr_drop", "6"]
LONGER_FASTER = ["--lr", "4e-4", "--lr_backbone", "4e-4", "--warmup_iters", "100", *LONGER]
# name -> (properties switched off, extra training flags, what differs from the hard set)
VARIANTS = {
    "hard": ((), [], "the hard set, the preset as it is"),
    "without_all": (HARD_SCENE_PROPERTIES, [], "the nine scene properties off"),
    "without_appearance": (("textures", "low_contrast"), [], "plain backgrounds, no low-contrast colours"),
    "without_geometry": (("occlusion", "border", "tiny", "crowd"), [],
                         "no occlusion, border cuts, tiny objects or crowd regions"),
    "without_format": (("sizes", "greyscale", "sparse_ids"), [],
                       "square 128 px images, no greyscale, category ids 1-7"),
    "without_drawing": (HARD_DRAWING_PROPERTIES, [], "five shapes, at most 4 per image, easy sizes and colours"),
    "like_easy": (HARD_PROPERTIES, [], "all thirteen properties off: drawn as the easy set, 1-5 ids"),
    "lr4e-4_2000it": ((), LONGER_FASTER, "lr and lr_backbone 4e-4, 100 warm-up steps, 8 epochs, lr drop after 6"),
    "2000it": ((), LONGER, "8 epochs (2,000 iterations), lr drop after 6"),
    "two_stage_500it": ((), ["--two_stage", "--num_queries", "100", "--epochs", "2"],
                        "two-stage query selection, 100 queries; a 500-iteration probe"),
    "aug7_2000it": ((), ["--epochs", "8", "--stop_epoch", "7"],
                    "8 epochs, RT-DETR's augmentation and multi-scale batches in the first 7 (the demo's policy)"),
    "no_aug_2000it": ((), ["--epochs", "8", "--stop_epoch", "0"],
                      "8 epochs without RT-DETR's augmentation or multi-scale batches"),
    "no_aug_1000it": ((), ["--stop_epoch", "0"],
                      "the preset's 1,000 iterations without RT-DETR's augmentation or multi-scale batches; a probe"),
    "layer4_500it": ((), ["--feature_layer", "layer4", "--num_feature_levels", "4", "--backbone_trainable_layers", "5",
                          "--epochs", "2"],
                     "ResNet-18's fourth stage and a fourth feature level; a 500-iteration probe"),
    "lr1e-4_500it": ((), ["--lr", "1e-4", "--lr_backbone", "1e-4", "--epochs", "2"],
                     "lr and lr_backbone 1e-4 (half the preset's); a 500-iteration probe"),
    "width256_500it": ((), ["--hidden_dim", "256", "--dim_feedforward", "1024", "--epochs", "2"],
                       "transformer width 256 (DETR's), feed-forward 1024; a 500-iteration probe"),
    "layer2_1000it": ((), ["--feature_layer", "layer2", "--backbone_trainable_layers", "3", "--epochs", "4"],
                      "stride-8 tokens (the ResNet up to layer2): 4x the tokens; a 1,000-iteration probe"),
    "8000it": ((), ["--epochs", "32", "--lr_drop", "24"],
               "32 epochs (8,000 iterations, four times the budget), lr drop after 24"),
    "pre_norm_gn_2000it": ((), ["--pre_norm", "--backbone_norm", "gn", *LONGER],
                           "DETR's from-scratch changes (pre-norm transformer, GroupNorm backbone), 2,000 iterations"),
}


def data_for(variant: str) -> Path:
    without = VARIANTS[variant][0]
    folder = Path("data/synthetic_hard" if not without else f"data/synthetic_hard_{variant}")
    return generate(folder, num_train=2000, num_val=200, image_size=128, seed=0, difficulty="hard",
                    hard_without=without)


def result(preset: str, variant: str, seed: int, out: Path) -> dict:
    """One run's AP, AP50 and training class error (%) after every epoch, and its iterations per epoch."""
    extra = VARIANTS[variant][1]
    data = data_for(variant)
    log = train_run(preset, seed, data, out / Path(preset).stem / f"{variant}_seed{seed}", extra)
    return {"preset": preset, "variant": variant, "seed": seed, "iters_per_epoch": iterations_per_epoch(preset, data),
            "ap": [e["test_coco_eval_bbox"][0] for e in log], "ap50": [e["test_coco_eval_bbox"][1] for e in log],
            "class_error": [e.get("train_class_error") for e in log]}


def table(results: list[dict]) -> str:
    """Per preset and variant: AP after every 250 iterations (mean over seeds), the final AP by seed, AP50 and the
    training class error of the last epoch (mean)."""
    lines = [BEGIN, "", "Hard synthetic set (2,000 train / 200 val images, `tools.data.synthetic --difficulty hard "
             "--seed 0`) and variants of it with properties switched off (`--hard_without`), or recipe changes; AP "
             "on the variant's own 200 val images after every epoch of 250 iterations (batch 8), mean over seeds. "
             "Class error: the last training epoch's, % of matched queries (7 classes: 86% is chance).", "",
             "| preset | variant | what differs | seeds | AP after 250 / 500 / ... iterations | final AP by seed | "
             "final AP50 | class error |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["preset"], r["variant"]), []).append(r)
    for (preset, variant), runs in groups.items():
        epochs = min(len(r["ap"]) for r in runs)
        curve = " / ".join(f"{statistics.mean(r['ap'][e] for r in runs):.3f}" for e in range(epochs))
        by_seed = ", ".join(f"{r['ap'][epochs - 1]:.3f} ({r['seed']})" for r in sorted(runs, key=lambda r: r["seed"]))
        ap50 = statistics.mean(r["ap50"][epochs - 1] for r in runs)
        errors = [r["class_error"][epochs - 1] for r in runs if r["class_error"][epochs - 1] is not None]
        error = f"{statistics.mean(errors):.0f}" if errors else "-"
        lines.append(f"| `{Path(preset).stem}` | `{variant}` | {VARIANTS[variant][2]} | {len(runs)} | {curve} | "
                     f"{by_seed} | {ap50:.3f} | {error} |")
    return "\n".join(lines + ["", END])


def ordered_table(results: list[dict]) -> str:
    """``table`` of the results sorted by preset, then variant in the order of VARIANTS, then seed."""
    order = {v: i for i, v in enumerate(VARIANTS)}
    return table(sorted(results, key=lambda r: (r["preset"], order.get(r["variant"], len(order)), r["seed"])))


def main(argv: list[str] | None = None, record: Path = RECORD, results: Path = RESULTS) -> list[dict]:
    parser = argparse.ArgumentParser("What makes the hard synthetic set hard")
    parser.add_argument("--preset", default="configs/demo_cpu_deformable.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="outputs/hard_ablation")
    options = parser.parse_args(argv)
    rows = []
    for variant in options.variants:
        for seed in options.seeds:
            # saved after each run: an interrupted ablation keeps the runs it finished
            rows = update_record(record, [result(options.preset, variant, seed, Path(options.out))],
                                 lambda r: (r["preset"], r["variant"], r["seed"]), ordered_table, BEGIN, END,
                                 "What makes the hard synthetic set hard", results=results)
    return rows


if __name__ == "__main__":
    main()
