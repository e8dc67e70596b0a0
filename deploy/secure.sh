#!/usr/bin/env bash
# Secure loopback deployment: a TLS flower-superlink with SuperNode authentication, N registered flower-supernode
# processes, the app run with `flwr run`, everything stopped afterwards. Credentials are made once (CA, TLS
# certificates, SuperNode keys) in $LSC4REC_CREDENTIALS (default deploy/credentials) and reused after that.
#   deploy/secure.sh 2 'overrides="federated.rounds=2"'
#   deploy/secure.sh 2 'overrides="federated.rounds=2"' --auth-drill      # also prove unregistered nodes are refused
set -euo pipefail
cd "$(dirname "$0")/.."
NODES="${1:-2}"
RUN_CONFIG="${2:-}"
shift $(( $# < 2 ? $# : 2 ))
CREDENTIALS="${LSC4REC_CREDENTIALS:-deploy/credentials}"
if [ ! -f "$CREDENTIALS/manifest.json" ]; then
    .venv/bin/python deploy/credentials.py --out "$CREDENTIALS" --supernodes "$NODES"
fi
exec .venv/bin/python deploy/secure.py --credentials "$CREDENTIALS" --supernodes "$NODES" --run-config "$RUN_CONFIG" "$@"
