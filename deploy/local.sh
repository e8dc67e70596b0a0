#!/usr/bin/env bash
# Start a real flower-superlink and N flower-supernode processes on loopback, run the app, stop everything.
#   deploy/local.sh 2 'overrides="federated.rounds=2"'
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python deploy/local.py --supernodes "${1:-2}" --run-config "${2:-}"
