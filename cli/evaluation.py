"""Flags of evaluation."""
import argparse


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--eval", action="store_true", help="evaluate --resume's model on the val set, no training")
    group.add_argument("--eval_every", default=1, type=int, help="evaluate every N epochs (and after the last)")
    group.add_argument("--eval_backend", default="pycocotools", choices=("pycocotools", "faster_coco_eval"),
                       help="the COCOeval implementation: pycocotools (the official one) or faster-coco-eval (C++, "
                            "the same 12 numbers)")
    group.add_argument("--eval_batch_invariant", action="store_true",
                       help="evaluate image by image, so that the numbers do not depend on --batch_size (by default "
                            "images are padded to a common size per batch, as the official code does)")
    group.add_argument("--confusion_threshold", default=0.5, type=float,
                       help="score from which a detection counts in the confusion matrix of each evaluation "
                            "(OUTPUT_DIR/eval/confusion_matrix.csv and .png; in [0, 1])")


def check(args: argparse.Namespace) -> None:
    if args.eval_every < 1:
        raise ValueError(f"--eval_every must be at least 1, got {args.eval_every}")
    if not 0.0 <= args.confusion_threshold <= 1.0:
        raise ValueError(f"--confusion_threshold must be in [0, 1] (a detection score), got {args.confusion_threshold}")
