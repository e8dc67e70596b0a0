#!/usr/bin/env bash
# Device call 2 of 2, issued as soon as call 1 returns (a machine stays warm 30 s after a call).
# Through the device tool: run(command="bash benchmarks/gpu/call2.sh 300", carry=[".gpu_payload/b"],
# timeout_s=<budget + 150>). Arguments: training seconds (default 300), configurations (default
# lr3e-4,lr1e-4; see CONFIGS in lsc4rec/models/llm/gpu_finetune.py).
# Assembles part a (stashed by call 1) with part b (layers 12-29 + the data, 44 MB), checks the probe logits,
# fine-tunes, and writes lists_*.npz + lists.json + log.json (+ run.log) to $OUT: 6 files of at most ~10 MB.
set -euo pipefail
export PYTHONUNBUFFERED=1
BUDGET="${1:-300}"
CONFIGS="${2:-lr3e-4,lr1e-4}"
if [ ! -f /tmp/lsc4rec_payload/a/meta.json ]; then
    echo "payload part a is not on this machine (was it given back between the calls?): run call 1 again" >&2
    exit 3
fi
python3 lsc4rec/models/llm/gpu_finetune.py /tmp/lsc4rec_payload/a .gpu_payload/b --out "$OUT" \
    --budget-s "$BUDGET" --configs "$CONFIGS" 2>&1 | tee "$OUT/run.log"
