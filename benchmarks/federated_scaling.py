"""Benchmark: federated round time, peak memory, traffic and validation for 10 to 10,000 SuperNodes.

    python benchmarks/federated_scaling.py                           # 10 / 100 / 1,000 nodes, 100 sampled
    python benchmarks/federated_scaling.py --nodes 1000 10000 --rounds 3           # 10,000 nodes, 100 sampled
    python benchmarks/federated_scaling.py --nodes 10 100 --sampled 0 --rounds 3   # every node every round
    python benchmarks/federated_scaling.py --extra model.hidden_size=64

Each setting is a real ``flwr run`` on a local simulation SuperLink (Ray), so the numbers include Flower's
transport and the actors, not only the algorithm. All 22,363 Beauty users are spread over the nodes; each
round samples ``--sampled`` nodes for training and for client evaluation (``strategy.fraction_train``,
``federated.fraction_evaluate``; 0 = every node), so a round sends the model to as many nodes whatever their
total, and each of them holds fewer users the more nodes there are. Reported per
run: seconds per round, validation NDCG@10 after the last round (the server's full ranking of every user),
training bytes per round (all sampled nodes), the ServerApp's peak memory and the peak of all processes, three
ways (Linux, from ``/proc``): the largest summed resident set of this process and every process it started
(SuperLink, ServerApp, simulation, Ray workers; every 0.2 s), which counts a page shared by several processes
(Ray's object store, mapped by the driver and the workers) once per process; the largest summed proportional
set size (each shared page split among its processes; every second); and the machine's used memory
(``MemTotal - MemAvailable``) above what it was when the run started, which counts every page once.
Writes ``outputs/benchmarks/federated_scaling.json`` + PNG, prints ``RESULT``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lsc4rec.argument_types import non_negative_int, positive_int
from lsc4rec.reporting import emit_result, write_json
from lsc4rec.settings import federated_settings_from_overrides
from lsc4rec.simulations.federated import launch
from lsc4rec.simulations.launch.flower import descendants

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def tree_rss_mb(root: int) -> float:
    """Summed resident memory (MiB) of ``root`` and all its descendants."""
    total = 0
    for pid in [root, *descendants(root)]:
        # A process may exit between listing and reading: it then no longer holds memory.
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    return total / 1024


def tree_pss_mb(root: int) -> float:
    """Summed proportional set size (MiB) of ``root`` and its descendants: a page shared by k processes
    counts 1/k in each (``/proc/<pid>/smaps_rollup``)."""
    total = 0.0
    for pid in [root, *descendants(root)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total / 1024


def machine_used_mb() -> float:
    """The machine's used memory (MiB): ``MemTotal - MemAvailable``."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return (fields["MemTotal"] - fields["MemAvailable"]) / 1024


class PeakMemory:
    """Samples this process tree's memory in a background thread: ``peak_mb`` the summed resident sets
    (every ``interval`` s), ``peak_pss_mb`` the summed proportional sets and ``peak_machine_mb`` the machine's
    used memory above its level at the start (every ``pss_every`` samples: reading the page tables costs)."""

    def __init__(self, interval: float = 0.2, pss_every: int = 5) -> None:
        self.interval = interval
        self.pss_every = pss_every
        self.peak_mb = 0.0
        self.peak_pss_mb = 0.0
        self.peak_machine_mb = 0.0
        self._baseline_mb = machine_used_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sample = 0
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(os.getpid()))
            self.peak_machine_mb = max(self.peak_machine_mb, machine_used_mb() - self._baseline_mb)
            if sample % self.pss_every == 0:
                self.peak_pss_mb = max(self.peak_pss_mb, tree_pss_mb(os.getpid()))
            sample += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_one(nodes: int, sampled: int, rounds: int, extra: list[str], out: Path) -> dict:
    """One ``flwr run`` with ``nodes`` SuperNodes, ``sampled`` of them per round (0 = all); its per-round
    timings, traffic, validation and peak memory."""
    name = f"scaling-{nodes}-{time.strftime('%Y%m%d-%H%M%S')}"
    fraction = 1.0 if sampled <= 0 else min(1.0, sampled / nodes)
    overrides = [
        "system=base",
        "federated.runtime=flower",
        f"federated.num_supernodes={nodes}",
        f"federated.rounds={rounds}",
        f"federated.min_available_nodes={nodes}",
        f"strategy.fraction_train={fraction:g}",
        f"federated.fraction_evaluate={fraction:g}",
        "train.progress=false",
        *extra,
    ]
    run = federated_settings_from_overrides([*overrides, f"run_name={name}"])
    start = time.perf_counter()
    with PeakMemory() as memory:
        launch(run, overrides, out / name)
    wall = time.perf_counter() - start
    metrics = json.loads((out / name / "metrics.json").read_text())
    rows = metrics["rounds"]
    round_seconds = [r["round_seconds"] for r in rows]
    traffic = [
        (r["train"]["bytes-sent"] + r["train"]["bytes-received"]) / max(r["train"]["nodes-sampled"], 1)
        for r in rows
    ]
    return {
        "nodes": nodes,
        "sampled_per_round": rows[-1]["train"]["nodes-sampled"],
        "rounds": rounds,
        "users_per_node": round(metrics["dataset_report"]["users_evaluated"] / nodes, 1),
        "round_seconds": [round(s, 1) for s in round_seconds],
        "mean_round_seconds": round(sum(round_seconds) / len(round_seconds), 1),
        "train_bytes_per_round_per_node": round(sum(traffic) / len(traffic)),
        "train_bytes_per_round": round(
            sum(r["train"]["bytes-sent"] + r["train"]["bytes-received"] for r in rows) / len(rows)
        ),
        "valid_NDCG@10": [round(r["server_valid"]["NDCG@10"], 4) for r in rows if "server_valid" in r],
        "peak_memory_mb": round(memory.peak_mb, 1),
        "peak_pss_mb": round(memory.peak_pss_mb, 1),
        "peak_machine_used_mb": round(memory.peak_machine_mb, 1),
        "server_peak_memory_mb": metrics["peak_memory_mb"],
        "wall_seconds": round(wall, 1),
        "failures": metrics["final"]["failures"],
        "final_test_NDCG@10": round(metrics["final"]["test"]["full"]["NDCG@10"], 4),
        "run_dir": str(out / name),
    }


def plot(rows: list[dict], path: Path) -> None:
    """Round time and peak memory against the number of SuperNodes."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    nodes = [r["nodes"] for r in rows]
    left.plot(nodes, [r["mean_round_seconds"] for r in rows], "o-")
    left.set_xlabel("simulated SuperNodes")
    left.set_ylabel("mean round wall time (s)")
    left.grid(alpha=0.3)
    right.plot(nodes, [r["peak_memory_mb"] for r in rows], "s-", color="tab:red")
    right.set_xlabel("simulated SuperNodes")
    right.set_ylabel("peak memory, all processes (MiB)")
    right.grid(alpha=0.3)
    sampled = rows[0]["sampled_per_round"] if rows else 0
    fig.suptitle(
        f"Federated SASRec on Beauty: {sampled} nodes sampled per round (fewer when there are fewer)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Run every node count and report them together."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=positive_int, nargs="+", default=[10, 100, 1000])
    parser.add_argument(
        "--sampled", type=non_negative_int, default=100, help="nodes sampled per round (0 = every node)"
    )
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--extra", nargs="*", default=[], help="further Hydra overrides")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    rows = []
    for nodes in args.nodes:
        rows.append(run_one(nodes, args.sampled, args.rounds, args.extra, args.out))
        logging.info("%s", {k: v for k, v in rows[-1].items() if k != "run_dir"})
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / "federated_scaling.json",
        {"runs": rows, "sampled": args.sampled, "extra_overrides": args.extra},
    )
    plot(rows, args.out / "federated_scaling.png")
    emit_result(
        {
            "benchmark": "federated_scaling",
            "runs": [{k: v for k, v in r.items() if k != "run_dir"} for r in rows],
        }
    )


if __name__ == "__main__":
    main()
