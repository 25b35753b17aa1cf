#!/usr/bin/env bash
# Create the environment if needed, generate the synthetic COCO-format dataset, then train and evaluate the
# small CPU preset of DINO (configs/demo_cpu_dino.yaml; README: The CPU demo). Outputs (log.txt, checkpoint.pth,
# config.yaml) go to outputs/demo. Extra arguments go to main.py, e.g. --config configs/demo_cpu.yaml for DETR.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/env.sh requirements.txt
.venv/bin/python -m tools.data.synthetic --out data/synthetic --num_train 2000 --num_val 200 --image_size 128 --seed 0
rm -rf outputs/demo
start=$(date +%s)
.venv/bin/python main.py --config configs/demo_cpu_dino.yaml --coco_path data/synthetic --output_dir outputs/demo "$@"
echo "demo finished in $(( $(date +%s) - start )) s of training and evaluation"
