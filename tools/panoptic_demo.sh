#!/usr/bin/env bash
# The panoptic CPU demo: create the environment if needed, generate the synthetic panoptic dataset, train the box
# model on things and stuff (configs/panoptic_demo_cpu.yaml), then the mask head on the frozen box model
# (configs/panoptic_demo_cpu_masks.yaml), and evaluate PQ, mask AP and box AP. Outputs go to outputs/panoptic_box
# and outputs/panoptic_masks (predicted PNGs and predictions.json in outputs/panoptic_masks/panoptic_eval).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/env.sh requirements.txt
data=data/synthetic_panoptic
.venv/bin/python -m tools.data.synthetic --out "$data" --num_train 2000 --num_val 200 --image_size 128 --seed 0 --panoptic
rm -rf outputs/panoptic_box outputs/panoptic_masks
start=$(date +%s)
.venv/bin/python main.py --config configs/panoptic_demo_cpu.yaml --coco_path "$data" --coco_panoptic_path "$data" \
    --output_dir outputs/panoptic_box "$@"
.venv/bin/python main.py --config configs/panoptic_demo_cpu_masks.yaml --coco_path "$data" --coco_panoptic_path "$data" \
    --frozen_weights outputs/panoptic_box/checkpoint.pth --output_dir outputs/panoptic_masks "$@"
echo "panoptic demo finished in $(( $(date +%s) - start )) s of training and evaluation"
