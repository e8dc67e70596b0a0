"""The federated simulation on a multi-node Ray cluster, shown on one machine: a head and a worker process.

    python deploy/ray_cluster.py                      # 1 worker; then the same run on Flower's own Ray
    python deploy/ray_cluster.py --workers 2 --extra federated.rounds=3

1. ``ray start --head`` (loopback, ``--cpus-per-node`` CPUs) and ``ray start --address=<head>`` for each
   worker: every one a separate Ray node (its own raylet and object store), as on separate machines.
2. Runs ``python -m lsc4rec.simulations.federated federated.ray_address=<head> <overrides>``: Flower's Ray
   backend joins the cluster instead of starting Ray itself; the ClientApp actors are placed over the nodes.
   A driver connected to the cluster meanwhile records, per Ray node, the most CPUs in use.
3. ``ray stop``, then the same run without ``federated.ray_address`` (Flower's own single-process Ray).
4. Compares the two: server validation NDCG@10 of every round and the final test, to 4 decimals.

Prints one ``RESULT {json}`` line (runs, the nodes that hosted actors, the comparison) and exits non-zero if a
run failed, if fewer than two Ray nodes ran actors, or if the numbers differ. On real machines: ``ray start
--head --port 6379`` on one, ``ray start --address=<head>:6379`` on each other (same Python environment with
lsc4rec installed, the data reachable), then ``make run ARGS=federated.ray_address=<head>:6379`` on the head.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lsc4rec.argument_types import non_negative_int, positive_int

REPO = Path(__file__).resolve().parents[1]
#: The run both runtimes execute: the plain federated SASRec over all Beauty users (4 SuperNodes, 2 rounds,
#: d=64), a few minutes on 2 cores and far enough from random that equal numbers mean something.
DEFAULT_OVERRIDES = [
    "system=base",
    "federated.num_supernodes=4",
    "federated.rounds=2",
    "model.hidden_size=64",
    "train.progress=false",
]


def ray_executable() -> str:
    """The ``ray`` CLI of this interpreter's environment."""
    candidate = Path(sys.executable).parent / "ray"
    found = str(candidate) if candidate.is_file() else shutil.which("ray")
    if not found:
        raise SystemExit("the ray CLI is not installed (pip install 'flwr[simulation]')")
    return found


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quiet_env() -> dict[str, str]:
    """The environment for Ray and the runs: no usage stats, offline models."""
    return {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "HF_HUB_OFFLINE": "1",
    }


def start_cluster(workers: int, cpus: int) -> str:
    """Start a head and ``workers`` worker nodes on loopback; return the head's ``host:port``."""
    address = f"127.0.0.1:{free_port()}"
    ray = ray_executable()
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats"]
    head = [ray, "start", "--head", f"--port={address.rsplit(':', 1)[1]}", "--include-dashboard=false"]
    subprocess.run([*head, *common], check=True, env=quiet_env(), capture_output=True, text=True)
    for _ in range(workers):
        subprocess.run(
            [ray, "start", f"--address={address}", *common],
            check=True,
            env=quiet_env(),
            capture_output=True,
            text=True,
        )
    return address


def stop_cluster() -> None:
    """``ray stop`` every Ray process this user started on this machine (head and workers)."""
    subprocess.run([ray_executable(), "stop", "--force"], env=quiet_env(), capture_output=True, check=False)


class ClusterWatch:
    """A driver on the cluster that records, per Ray node, the most CPUs in use while the run goes on."""

    def __init__(self, address: str, expected_nodes: int, timeout: float = 60.0) -> None:
        """Connect to the cluster at ``address`` and wait until ``expected_nodes`` nodes are alive."""
        import ray

        os.environ.update(quiet_env())  # this driver too: no usage stats, no accelerator notice
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        deadline = time.monotonic() + timeout
        while len(self.alive()) < expected_nodes:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(self.alive())} of {expected_nodes} Ray nodes came up")
            time.sleep(0.5)
        self.totals = {node["NodeID"]: node["Resources"].get("CPU", 0.0) for node in self.alive()}
        self.busiest = dict.fromkeys(self.totals, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    @staticmethod
    def alive() -> list[dict[str, Any]]:
        """The cluster's live nodes (``ray.nodes()``)."""
        import ray

        return [node for node in ray.nodes() if node["Alive"]]

    def _poll(self) -> None:
        from ray._private.state import available_resources_per_node

        while not self._stop.is_set():
            for node, free in available_resources_per_node().items():
                used = self.totals.get(node, 0.0) - free.get("CPU", 0.0)
                self.busiest[node] = max(self.busiest.get(node, 0.0), used)
            self._stop.wait(0.2)

    def close(self) -> dict[str, float]:
        """Stop watching and disconnect; the most CPUs in use per node."""
        import ray

        self._stop.set()
        self._thread.join(timeout=5.0)
        ray.shutdown()
        return self.busiest


def federated_run(overrides: list[str], name: str, out: Path) -> dict[str, Any]:
    """One ``python -m lsc4rec.simulations.federated`` run; its per-round validation and final test."""
    command = [
        sys.executable,
        "-m",
        "lsc4rec.simulations.federated",
        *overrides,
        f"run_name={name}",
        f"hydra.run.dir={out / name}",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=quiet_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"the {name} run failed (exit {done.returncode})")
    metrics = json.loads((out / name / "metrics.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "valid_NDCG@10": [row["server_valid"]["NDCG@10"] for row in metrics["rounds"]],
        "test_NDCG@10": metrics["final"]["test"]["full"]["NDCG@10"],
        "failures": metrics["final"]["failures"],
    }


def main() -> None:
    """Start the cluster, run on it, stop it, run without it, compare, report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=non_negative_int, default=1, help="worker nodes besides the head")
    parser.add_argument("--cpus-per-node", type=positive_int, default=1, help="CPUs each Ray node offers")
    parser.add_argument("--extra", nargs="*", default=[], help="further Hydra overrides for both runs")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "ray-cluster")
    args = parser.parse_args()
    overrides = [*DEFAULT_OVERRIDES, *args.extra]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    nodes = 1 + args.workers

    stop_cluster()  # a cluster left over from an interrupted drill would join this one
    address = start_cluster(args.workers, args.cpus_per_node)
    print(
        f"Ray cluster: head {address} + {args.workers} worker node(s), {args.cpus_per_node} CPU each",
        flush=True,
    )
    try:
        watch = ClusterWatch(address, nodes)
        try:
            cluster = federated_run(
                [*overrides, f"federated.ray_address={address}"], f"ray-cluster-{stamp}", args.out
            )
        finally:
            busiest = watch.close()
    finally:
        stop_cluster()
    print(f"on the cluster: {cluster}", flush=True)
    single = federated_run(overrides, f"ray-single-{stamp}", args.out)
    print(f"on Flower's own Ray: {single}", flush=True)

    nodes_used = sum(used > 0 for used in busiest.values())
    pairs = [*zip(cluster["valid_NDCG@10"], single["valid_NDCG@10"], strict=True)]
    pairs.append((cluster["test_NDCG@10"], single["test_NDCG@10"]))
    same = all(round(a, 4) == round(b, 4) for a, b in pairs)
    result = {
        "ray_nodes": nodes,
        "ray_nodes_that_ran_actors": nodes_used,
        "cpus_in_use_per_node": sorted(busiest.values(), reverse=True),
        "cluster_run": cluster,
        "single_machine_run": single,
        "same_to_4_decimals": same,
        "largest_difference": max(abs(a - b) for a, b in pairs),
        "overrides": overrides,
    }
    print("RESULT " + json.dumps(result), flush=True)
    if not same or nodes_used < 2 or cluster["failures"] or single["failures"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
