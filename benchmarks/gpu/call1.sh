#!/usr/bin/env bash
# Device call 1 of 2 for the pretrained cloud (docs/collaboration.md, "Pretrained cloud on a GPU").
# Through the device tool: run(command="bash benchmarks/gpu/call1.sh", carry=[".gpu_payload/a"], timeout_s=240)
# Stashes payload part a (layers 0-11 + the item table, 55 MB) in /tmp for call 2, runs the GPU script's
# end-to-end smoke test on the GPU (a tiny random Llama) and times training steps of SmolLM2's real shape.
set -euo pipefail
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -c "import numpy, torch, transformers; print(torch.__version__, transformers.__version__, numpy.__version__)"
rm -rf /tmp/lsc4rec_payload && mkdir -p /tmp/lsc4rec_payload
cp -r .gpu_payload/a /tmp/lsc4rec_payload/a
du -sh /tmp/lsc4rec_payload/a
python3 lsc4rec/models/llm/gpu_finetune.py --smoke "$OUT/smoke" --bench /tmp/lsc4rec_payload/a 2>&1 | tee "$OUT/call1.log"
