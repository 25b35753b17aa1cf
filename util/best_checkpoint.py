"""The best epoch of a run by validation AP: ``checkpoint_best.pth`` and ``--early_stop``.

The metric is the box AP of the evaluated weights, as log.txt names it: the moving average's
(``test_ema_coco_eval_bbox``, as RT-DETR's code chooses its best.pth) when ``--ema`` evaluates one, else the model's
(``test_coco_eval_bbox``); index 0, AP at IoU 0.50:0.95. ``best.json`` beside the checkpoint names the metric, its
value and the epoch; a resumed run reads the values back from log.txt, so it keeps the best of the epochs before it.
"""
import json
import math
import os
import shutil
from pathlib import Path

BEST_NAME = "checkpoint_best.pth"


class BestCheckpoint:
    """Tracks the best evaluation; ``evaluations_since_best`` counts the later evaluations that did not beat it."""

    def __init__(self, metric: str):
        self.metric = metric
        self.value = -math.inf
        self.epoch: int | None = None
        self.evaluations_since_best = 0

    @classmethod
    def from_log(cls, metric: str, output_dir: Path | None) -> "BestCheckpoint":
        """The tracker as the epochs already in ``output_dir/log.txt`` leave it (a resumed run)."""
        best = cls(metric)
        log = output_dir / "log.txt" if output_dir is not None else None
        if log is not None and log.is_file():
            for line in log.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    if metric in entry:
                        best.update(entry["epoch"], entry)
        return best

    def update(self, epoch: int, log_stats: dict) -> bool:
        """Take epoch ``epoch``'s log line; True when its metric beats every earlier one (ties keep the earlier)."""
        value = log_stats[self.metric][0]
        if value > self.value:
            self.value, self.epoch, self.evaluations_since_best = value, epoch, 0
            return True
        self.evaluations_since_best += 1
        return False

    def description(self) -> dict:
        """``best.json``'s content: the metric (as log.txt names it), its best value and that epoch."""
        return {"metric": f"{self.metric}[0]", "value": self.value, "epoch": self.epoch, "checkpoint": BEST_NAME}


def keep_best(output_dir: Path, checkpoint: Path, best: BestCheckpoint) -> Path:
    """Copy ``checkpoint`` (this epoch's, just written) to ``output_dir/checkpoint_best.pth`` and describe it in
    ``best.json``, each atomically (a temporary file, then a rename): an interrupted copy leaves the previous best
    in place."""
    target = output_dir / BEST_NAME
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(checkpoint, temporary)
    os.replace(temporary, target)
    description = output_dir / "best.json"
    temporary = description.with_name(".best.json.tmp")
    temporary.write_text(json.dumps(best.description(), indent=1) + "\n")
    os.replace(temporary, description)
    return target
