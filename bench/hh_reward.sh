#!/usr/bin/env bash
# Reward model on the HH-RLHF harmless sample with the default SmolLM2-135M-Instruct, CPU-sized.
# Usage: bash bench/hh_reward.sh [WORKDIR] [extra train flags...]   (run from the repository root)
set -euo pipefail
WORK=${1:-/tmp/prefkit-hh}; shift || true
HH=${HH:-../shared/data/hh-rlhf-harmless-sample.jsonl.gz}
export HF_HUB_OFFLINE=1
rm -rf "$WORK/store"
python -m annotate import "$HH" --format hh --store "$WORK/store"
python -m annotate export --store "$WORK/store" --out "$WORK/prefs.parquet" --test-fraction 0.1
/usr/bin/time -v python rlhf/train.py reward --data "$WORK/prefs-train.parquet" --output-dir "$WORK/reward" \
  --max-length 256 --per-device-train-batch-size 4 --max-steps 40 --learning-rate 2e-5 --logging-steps 5 "$@"
cat "$WORK/reward/eval.json"
