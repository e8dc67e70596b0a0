"""Benchmark: federated SASRec on Beauty against the centralized baseline (target: >= 90% of its NDCG@10).

    python benchmarks/federated_vs_centralized.py --centralized-ndcg10 0.0482 --rounds 20 --nodes 4
    python benchmarks/federated_vs_centralized.py --centralized-json outputs/benchmarks/x.json

Runs the federated job with the in-process runtime (the same ClientApp/ServerApp code as under ``flwr run``,
without Ray start-up and polling, so the numbers measure the algorithm, not the transport), then writes
``outputs/benchmarks/federated_vs_centralized.json`` + the run's per-round PNG and prints ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from lsc4rec.argument_types import fraction, positive_int
from lsc4rec.reporting import emit_result, write_json
from lsc4rec.settings import federated_settings_from_overrides
from lsc4rec.simulations.federated import launch


def centralized_reference(args: argparse.Namespace) -> float:
    """The centralized SASRec test NDCG@10 (full ranking) to compare with."""
    if args.centralized_ndcg10 is not None:
        return float(args.centralized_ndcg10)
    runs = json.loads(Path(args.centralized_json).read_text())["runs"]
    for run in runs:
        if run["dataset"] == "beauty" and run["model"] == "sasrec":
            return float(run["test"]["full"]["NDCG@10"])
    raise SystemExit(f"no beauty/sasrec run in {args.centralized_json}")


def main() -> None:
    """Run the federated benchmark."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--centralized-ndcg10", type=fraction, default=None)
    parser.add_argument("--centralized-json", default="outputs/benchmarks/centralized_baselines.json")
    parser.add_argument("--rounds", type=positive_int, default=20)
    parser.add_argument("--nodes", type=positive_int, default=4)
    parser.add_argument("--extra", nargs="*", default=[], help="further Hydra overrides")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    reference = centralized_reference(args)
    name = f"federated-beauty-sasrec-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [
        "system=base",
        "federated.runtime=inprocess",
        f"federated.rounds={args.rounds}",
        f"federated.num_supernodes={args.nodes}",
        "train.progress=false",
        *args.extra,
    ]
    run = federated_settings_from_overrides([*overrides, f"run_name={name}"])
    summary = launch(run, overrides, args.out / name)
    federated = summary["test"]["full"]["NDCG@10"]
    result = {
        "benchmark": "federated_vs_centralized",
        "nodes": args.nodes,
        "rounds": args.rounds,
        "best_round": summary["best_round"],
        "federated_NDCG@10": round(federated, 4),
        "federated_HR@10": round(summary["test"]["full"]["HR@10"], 4),
        "centralized_NDCG@10": round(reference, 4),
        "ratio": round(federated / reference, 3),
        "meets_target": federated >= 0.9 * reference,
        "mean_round_seconds": round(summary["mean_round_seconds"], 1),
        "bytes_per_round_per_node": round(
            (summary["bytes_sent"] + summary["bytes_received"]) / args.rounds / args.nodes
        ),
        "run_dir": str(args.out / name),
    }
    write_json(args.out / "federated_vs_centralized.json", {"result": result, "summary": summary})
    emit_result(result)


if __name__ == "__main__":
    main()
