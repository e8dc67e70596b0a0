"""Benchmark: throughput and latency of the gRPC candidate service at 1, 8 and 32 concurrent clients.

    python benchmarks/candidate_service_throughput.py                          # popularity source, Beauty
    python benchmarks/candidate_service_throughput.py --requests 500 --n 50
    python benchmarks/candidate_service_throughput.py --source llm --llm-path outputs/llm/run-x/model

Starts the candidate service (in a separate process by default, so the measuring clients do not share the
server's interpreter lock; ``--in-process`` keeps it in this one) with token authentication, then for each
concurrency level runs that many client threads, each with its own channel, each sending ``--requests``
requests for real Beauty user histories (leave-one-out test histories: train part + validation item, cut to
the service's ``max_history``). Every reply is checked (``n`` distinct items outside the history, scores
non-increasing). After each level it reads the server's own counters (``Metrics`` rpc: its latency quantiles,
micro-batch sizes) and the server process's peak resident memory so far (Linux ``VmHWM``). Writes
``outputs/benchmarks/candidate_service_throughput.json`` and a PNG next to it, and prints ``RESULT {json}``.

Sources: ``popularity`` ranks items by their count in the training parts (add-one smoothed log-probability
scores, history items excluded); ``llm`` loads a saved cloud LLM with
``lsc4rec.models.llm.recommender.load_candidate_source(--llm-path)``, served through ONNX Runtime
(``--llm-runtime onnx``, as federated runs do by default) or PyTorch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lsc4rec.argument_types import existing_dir, positive_float, positive_int
from lsc4rec.client.collab.candidate_client import CandidateServiceClient, CandidateServiceError
from lsc4rec.data import LeaveOneOutSplit, leave_one_out, load_dataset
from lsc4rec.models.llm.candidates import CandidateList, CandidateSource
from lsc4rec.models.popularity import PopularitySource
from lsc4rec.proto.service_metrics import MetricsSnapshot
from lsc4rec.reporting import emit_result, peak_memory_mb, process_memory_mib, write_json

logger = logging.getLogger("candidate_service_throughput")

#: Seconds the parent waits for the server process to load its source and bind.
SERVER_START_TIMEOUT = 600.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", choices=["popularity", "llm"], default="popularity")
    parser.add_argument(
        "--llm-path", type=existing_dir, default=None, help="saved cloud LLM folder (--source llm)"
    )
    parser.add_argument(
        "--llm-runtime",
        choices=["onnx", "torch"],
        default="onnx",
        help="how the service runs the LLM (--source llm): its scoring pass in ONNX Runtime, or PyTorch",
    )
    parser.add_argument("--dataset", default="beauty", help="dataset name (embedded: beauty)")
    parser.add_argument("--data-path", default=None, help="data file/folder for a non-embedded dataset")
    parser.add_argument(
        "--max-history", type=positive_int, default=50, help="popularity source's max_history"
    )
    parser.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests", type=positive_int, default=200, help="requests per client at every level"
    )
    parser.add_argument("--n", type=positive_int, default=20, help="candidates per history")
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="histories per request (RecommendBatch)"
    )
    parser.add_argument(
        "--server-workers",
        type=int,
        default=8,
        help="server threads that run the model (waiting calls hold none)",
    )
    parser.add_argument(
        "--batch-delay-ms",
        type=float,
        default=None,
        help="micro-batch concurrent calls, each waiting at most this long for others (0: only what queued "
        "while the model was busy; default: no micro-batching)",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=10.0, help="client deadline per call, seconds"
    )
    parser.add_argument("--in-process", action="store_true", help="run the server in this process")
    parser.add_argument("--seed", type=int, default=0, help="shuffles which users each client asks for")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args(argv)
    if args.source == "llm" and args.llm_path is None:
        parser.error("--source llm needs --llm-path DIR (a folder written by CloudLLM.save_pretrained)")
    if min(args.concurrency) < 1 or args.requests < 1 or args.n < 1 or args.batch_size < 1:
        parser.error("--concurrency, --requests, --n and --batch-size must be >= 1")
    return args


def load_split(dataset: str, data_path: str | None) -> LeaveOneOutSplit:
    """The leave-one-out split of ``dataset`` (the same ids every model in the project uses)."""
    return leave_one_out(load_dataset(dataset, data_path))


def build_source(args: argparse.Namespace, split: LeaveOneOutSplit) -> CandidateSource:
    """The candidate source to serve: the popularity ranker or a saved cloud LLM."""
    if args.source == "popularity":
        return PopularitySource(split.train_sequences(), split.num_items, args.max_history)
    try:
        # Imported lazily: it pulls in torch/transformers, which the popularity run does not need.
        from lsc4rec.models.llm.recommender import load_candidate_source
    except ImportError as error:
        raise SystemExit(
            "--source llm needs lsc4rec.models.llm.recommender.load_candidate_source(path), which could not "
            f"be imported: {error}"
        ) from error
    llm = load_candidate_source(args.llm_path)
    if args.llm_runtime == "torch":
        return llm
    from lsc4rec.models.llm.onnx_serving import OnnxCandidateSource

    return OnnxCandidateSource(llm)


def batch_delay(args: argparse.Namespace) -> float | None:
    """The service's micro-batching delay in seconds (None = off) from ``--batch-delay-ms``."""
    return None if args.batch_delay_ms is None else args.batch_delay_ms / 1000


def _serve_in_child(
    args: argparse.Namespace, token: str, conn: Connection, user_store: bool, log_path: str | None
) -> None:
    """Server process: load the data and source, serve, report the port, and stop when told to. With
    ``user_store`` it also holds the users' test histories (what RecommendForUsers answers from); with
    ``log_path`` its log goes to that file instead of stderr."""
    logging.basicConfig(
        level=logging.INFO, filename=log_path, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        running = _serve(args, load_split(args.dataset, args.data_path), token, user_store)
    except BaseException as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        raise
    conn.send(("ready", running.port, os.getpid()))
    conn.recv()  # any message (or the parent closing the pipe) means stop
    running.stop(grace=1.0)


def _serve(args: argparse.Namespace, split: LeaveOneOutSplit, token: str, user_store: bool) -> Any:
    """Start the candidate service for the benchmark's source (and, with ``user_store``, the users' test
    histories); return the running service."""
    from lsc4rec.serving import serve

    return serve(
        build_source(args, split),
        token=token,
        max_workers=args.server_workers,
        batch_delay=batch_delay(args),
        user_histories=split.test_histories() if user_store else None,
    )


class ServerHandle:
    """The service under test, in this process or a child process; ``target`` is where clients connect."""

    def __init__(
        self,
        args: argparse.Namespace,
        split: LeaveOneOutSplit,
        token: str,
        *,
        in_process: bool,
        user_store: bool = False,
        log_path: Path | None = None,
    ) -> None:
        """Start the service in this process or a child process (blocks until it listens); ``user_store`` and
        ``log_path`` as for the child process (:func:`_serve_in_child`; ``log_path`` applies to it only)."""
        self._process: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._running: Any = None
        if in_process:
            self._running = _serve(args, split, token, user_store)
            port = self._running.port
            self.pid = os.getpid()
        else:
            # spawn, not fork: a forked child would inherit this process's gRPC state, which gRPC forbids.
            context = mp.get_context("spawn")
            self._conn, child_conn = context.Pipe()
            self._process = context.Process(
                target=_serve_in_child,
                args=(args, token, child_conn, user_store, str(log_path) if log_path else None),
                name="candidate-service",
            )
            self._process.start()
            if not self._conn.poll(SERVER_START_TIMEOUT):
                self.stop()
                raise SystemExit(f"the candidate service did not start within {SERVER_START_TIMEOUT:.0f} s")
            status, value, *pid = self._conn.recv()
            if status != "ready":
                self.stop()
                raise SystemExit(f"the candidate service failed to start: {value}")
            port, self.pid = int(value), int(pid[0])
        self.target = f"127.0.0.1:{port}"

    def peak_memory_mb(self) -> float | None:
        """Peak resident memory of the server's process so far in MiB (Linux ``VmHWM``; None elsewhere)."""
        return process_memory_mib(self.pid, "VmHWM")

    def stop(self) -> None:
        """Stop the service and, for a child process, wait for it to exit."""
        if self._running is not None:
            self._running.stop(grace=1.0)
        if self._process is not None:
            assert self._conn is not None
            with contextlib.suppress(OSError):  # BrokenPipeError: the child already exited
                self._conn.send("stop")
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=10)


def check_reply(result: CandidateList, histories: Sequence[Sequence[int]], n: int) -> int:
    """Number of rows that break the candidate contract (wrong width, history item, repeat, unsorted)."""
    bad = 0
    for row, history in enumerate(histories):
        items = result.items[row]
        filled = items[items > 0]
        scores = result.scores[row][: len(filled)]
        if (
            items.shape[0] != n
            or len(np.unique(filled)) != len(filled)
            or np.isin(filled, np.asarray(history)).any()
            or (np.diff(scores) > 0).any()
        ):
            bad += 1
    return bad


def run_level(
    target: str,
    token: str,
    clients: int,
    requests: int,
    requests_histories: list[list[list[int]]],
    n: int,
    timeout: float,
) -> dict[str, Any]:
    """``clients`` threads, each with its own channel, sending ``requests`` requests; latency statistics."""
    connections = [CandidateServiceClient(target, token=token, timeout=timeout) for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[Counter[str]] = [Counter() for _ in range(clients)]
    contract_violations = [0] * clients
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * clients
    barrier = threading.Barrier(clients)

    failures: list[BaseException] = []

    def client_loop(index: int) -> None:
        client = connections[index]
        try:
            # Warm-up outside the timed part: connect (HTTP/2 handshake) and fetch Info.
            client.recommend(requests_histories[(index * requests) % len(requests_histories)], n)
        except BaseException as error:
            failures.append(error)
            barrier.abort()  # release the other clients instead of leaving them waiting forever
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        started = time.perf_counter()
        for k in range(requests):
            histories = requests_histories[(index * requests + k) % len(requests_histories)]
            sent = time.perf_counter()
            try:
                result = client.recommend(histories, n)
            except CandidateServiceError as error:
                errors[index][error.code.name] += 1
                continue
            latencies[index].append(time.perf_counter() - sent)
            contract_violations[index] += check_reply(result, histories, n)
        spans[index] = (started, time.perf_counter())

    threads = [threading.Thread(target=client_loop, args=(i,), name=f"client-{i}") for i in range(clients)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for connection in connections:
            connection.close()
    if failures:
        raise SystemExit(f"a client could not reach the service during warm-up: {failures[0]}")

    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    flat_ms = np.asarray([value for per_client in latencies for value in per_client]) * 1000.0
    error_counts = sum(errors, Counter())
    ok = int(flat_ms.size)
    return {
        "clients": clients,
        "requests": clients * requests,
        "ok": ok,
        "errors": dict(error_counts),
        "contract_violations": int(sum(contract_violations)),
        "wall_s": round(wall, 4),
        "requests_per_s": round(ok / wall, 2) if wall > 0 else float("nan"),
        "histories_per_s": round(ok * len(requests_histories[0]) / wall, 2) if wall > 0 else float("nan"),
        "latency_ms": {
            "mean": round(float(flat_ms.mean()), 3) if ok else float("nan"),
            "p50": round(float(np.percentile(flat_ms, 50)), 3) if ok else float("nan"),
            "p90": round(float(np.percentile(flat_ms, 90)), 3) if ok else float("nan"),
            "p99": round(float(np.percentile(flat_ms, 99)), 3) if ok else float("nan"),
            "max": round(float(flat_ms.max()), 3) if ok else float("nan"),
        },
        # Spread of per-client throughput: a large spread means some clients were starved.
        "per_client_requests_per_s_stdev": round(
            statistics.pstdev(
                len(lat) / (end - start) for lat, (start, end) in zip(latencies, spans, strict=True)
            ),
            2,
        ),
    }


def server_view(during: MetricsSnapshot, peak_mb: float | None) -> dict[str, Any]:
    """What the server saw of one level: its own latency quantiles of the benchmark's rpc, the mean
    micro-batch, and its peak memory so far."""
    stats = during.stats("RecommendBatch").summary()
    return {
        "calls": stats["calls"],
        "codes": stats["codes"],
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
        "mean_batch_histories": during.summary().get("batching", {}).get("mean_rows"),
        "peak_memory_mb": _round(peak_mb),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def plot(levels: list[dict[str, Any]], path: Path, title: str) -> None:
    """Requests/s and p50/p99 latency against the number of concurrent clients."""
    clients = [level["clients"] for level in levels]
    fig, (ax_rate, ax_latency) = plt.subplots(1, 2, figsize=(10, 4))
    ax_rate.plot(clients, [level["requests_per_s"] for level in levels], marker="o")
    ax_rate.set_ylabel("requests / s")
    ax_rate.set_ylim(bottom=0)
    ax_latency.plot(clients, [level["latency_ms"]["p50"] for level in levels], marker="o", label="p50")
    ax_latency.plot(clients, [level["latency_ms"]["p99"] for level in levels], marker="o", label="p99")
    ax_latency.set_ylabel("latency (ms)")
    ax_latency.set_yscale("log")
    ax_latency.legend()
    for ax in (ax_rate, ax_latency):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent clients (one channel each)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Start the service, measure every concurrency level, and report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    split = load_split(args.dataset, args.data_path)
    token = secrets.token_urlsafe(24)  # exercise the auth path as a deployment would
    load_before = os.getloadavg()[0]
    server = ServerHandle(args, split, token, in_process=args.in_process)
    try:
        probe = CandidateServiceClient(server.target, token=token, timeout=args.timeout)
        health = probe.health()
        if health != "SERVING":
            raise SystemExit(f"the candidate service's health check says {health}, not SERVING")
        info = probe.info()
        memory_at_start = server.peak_memory_mb()
        if max(max(h) for h in split.test_histories()) > info.num_items:
            raise SystemExit(
                f"the service knows {info.num_items} items but {args.dataset} uses ids up to "
                f"{split.num_items}: the model was trained on other data"
            )
        if args.n > info.max_n:
            raise SystemExit(f"--n {args.n} is above the service's max_n = {info.max_n}")
        # Real users' histories (train part + validation item), cut to what the service accepts, shuffled so
        # that each client asks for different users.
        users = [history[-info.max_history :] for history in split.test_histories()]
        order = np.random.default_rng(args.seed).permutation(len(users))
        users = [users[i] for i in order]
        batches = [
            [users[(k * args.batch_size + j) % len(users)] for j in range(args.batch_size)]
            for k in range(max(args.concurrency) * args.requests)
        ]
        levels = []
        for clients in args.concurrency:
            logger.info("measuring %d concurrent clients x %d requests", clients, args.requests)
            before = probe.metrics()
            level = run_level(server.target, token, clients, args.requests, batches, args.n, args.timeout)
            level["server"] = server_view(probe.metrics().since(before), server.peak_memory_mb())
            logger.info(
                "%d clients: %.1f requests/s, p50 %.2f ms, p99 %.2f ms, errors %s; server: mean batch %s, "
                "peak %s MiB",
                clients,
                level["requests_per_s"],
                level["latency_ms"]["p50"],
                level["latency_ms"]["p99"],
                level["errors"] or "none",
                level["server"]["mean_batch_histories"],
                level["server"]["peak_memory_mb"],
            )
            levels.append(level)
    finally:
        with contextlib.suppress(NameError):
            probe.close()
        server.stop()

    payload = {
        "benchmark": "candidate_service_throughput",
        "source": args.source,
        "llm_path": args.llm_path,
        "dataset": args.dataset,
        "service": {
            "num_items": info.num_items,
            "max_history": info.max_history,
            "max_n": info.max_n,
            "model_version": info.model_version,
            "server_workers": args.server_workers,
            "batch_delay_ms": args.batch_delay_ms,
            "llm_runtime": args.llm_runtime if args.source == "llm" else None,
            "server_process": "in-process" if args.in_process else "separate process",
            "auth": "bearer token",
            "tls": False,
        },
        "n": args.n,
        "histories_per_request": args.batch_size,
        "requests_per_client": args.requests,
        "users": len(users),
        "machine": {"cpus": os.cpu_count(), "load_average_1min_before": round(load_before, 2)},
        "grpcio": grpc.__version__,
        "levels": levels,
        "peak_memory_mb_server_process_at_start": _round(memory_at_start),
        "peak_memory_mb_client_process": round(peak_memory_mb(), 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = write_json(args.out / "candidate_service_throughput.json", payload)
    title = f"candidate service, {args.source} source, n={args.n}, {args.batch_size} history/request"
    plot(levels, args.out / "candidate_service_throughput.png", title)
    logger.info("wrote %s and its plot", json_path)
    emit_result(
        {
            "benchmark": "candidate_service_throughput",
            "source": args.source,
            "n": args.n,
            "histories_per_request": args.batch_size,
            "levels": [
                {
                    "clients": level["clients"],
                    "requests_per_s": level["requests_per_s"],
                    "p50_ms": level["latency_ms"]["p50"],
                    "p99_ms": level["latency_ms"]["p99"],
                    "errors": sum(level["errors"].values()),
                    "contract_violations": level["contract_violations"],
                    "server_peak_mb": level["server"]["peak_memory_mb"],
                }
                for level in levels
            ],
        }
    )


if __name__ == "__main__":
    main()
