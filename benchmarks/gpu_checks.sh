#!/usr/bin/env bash
# Every GPU check in one run, for a session that is lent a GPU (a few minutes on an H200). Writes its figures to
# ${OUT:-outputs/gpu_checks}/ (one JSON or log per check) and a summary to stdout; record them in benchmarks/RESULTS.md.
#   bash benchmarks/gpu_checks.sh
# 1. the GPU tests (deformable attention against its CPU result), 2. AMP, compile and fused AdamW against fp32 eager
# at R50 800 px, batch 4 (iterations/s, images/s, peak memory), 3. MSDeformAttn forward and backward at R50 sizes,
# 4. one short training of the tiny models with --amp bf16 / fp16 / --compile / --ema on the GPU (finite losses),
# 5. per-image latency of the RT-DETRv2 and D-FINE presets at batch 1 (eager, compile, onnxruntime CUDA).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-outputs/gpu_checks}"
mkdir -p "$out"
py=.venv/bin/python
[ -x "$py" ] || py=python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
$py -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py tests/test_train_step.py tests/test_compile.py \
    > "$out/tests.log" 2>&1; echo "tests rc=$?" | tee -a "$out/summary.txt"
$py -m benchmarks.speed --preset r50_gpu --rounds 5 --steps 5 > "$out/speed_r50_gpu.json" 2> "$out/speed_r50_gpu.err"
echo "speed rc=$?" | tee -a "$out/summary.txt"
$py -m benchmarks.speed --preset r50_gpu --rounds 5 --steps 5 --fast_flags "--amp off" \
    > "$out/speed_r50_gpu_fp32_compile.json" 2> "$out/speed_r50_gpu_fp32_compile.err"
echo "speed fp32 + compile rc=$?" | tee -a "$out/summary.txt"
$py -m benchmarks.deformable_attention --device cuda --rounds 10 --steps 10 > "$out/deformable_attention.json" \
    2> "$out/deformable_attention.err"; echo "deformable attention rc=$?" | tee -a "$out/summary.txt"
$py -m tools.data.synthetic --out "$out/data" --num_train 64 --num_val 16 --image_size 128 --seed 0 > /dev/null
for flags in "--amp bf16" "--amp fp16" "--compile" "--ema 0.99" "--amp bf16 --compile"; do
  name=$(echo "$flags" | tr -d ' -' | tr '.' '_')
  $py main.py --config configs/demo_cpu.yaml --device cuda --coco_path "$out/data" --epochs 2 --lr_drop 1 \
      --output_dir "$out/train_$name" $flags > "$out/train_$name.log" 2>&1
  echo "train $flags rc=$? $(tail -n 1 "$out/train_$name.log")" | tee -a "$out/summary.txt"
done
$py -m benchmarks.latency --device cuda --runs 100 --warmup 20 --config configs/rtdetrv2_r18vd.yaml \
    --config configs/rtdetrv2_r50vd.yaml --config configs/dfine_n.yaml --config configs/dfine_s.yaml \
    > "$out/latency.log" 2>&1; echo "latency rc=$? $(tail -n 5 "$out/latency.log")" | tee -a "$out/summary.txt"
