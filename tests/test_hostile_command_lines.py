"""Every command line of deploy/ and benchmarks/ answers a bad value with a clean usage error: exit status 2,
the flag named, no Python traceback (the same care the data readers get)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: (script, arguments, what stderr must name)
CASES: list[tuple[str, list[str], str]] = [
    ("deploy/credentials.py", ["--supernodes", "-1"], "--supernodes: must be >= 0, got -1"),
    ("deploy/credentials.py", ["--days", "0"], "--days: must be >= 1, got 0"),
    ("deploy/credentials.py", ["--ca-days", "ten"], "--ca-days: must be a whole number, got 'ten'"),
    ("deploy/drills.py", ["supernode-crash", "--rounds", "0"], "--rounds: must be >= 1, got 0"),
    (
        "deploy/drills.py",
        ["candidate-service", "--service-seconds", "nan"],
        "--service-seconds: must be a finite number",
    ),
    ("deploy/drills.py", ["_serve", "x", "--port", "70000", "--token-file", "t"], "--port: must be a port"),
    ("deploy/local.py", ["--supernodes", "0"], "--supernodes: must be >= 1, got 0"),
    ("deploy/local.py", ["--timeout", "-5"], "--timeout: must be > 0, got -5"),
    ("deploy/ray_cluster.py", ["--workers", "-2"], "--workers: must be >= 0, got -2"),
    ("deploy/ray_cluster.py", ["--cpus-per-node", "0"], "--cpus-per-node: must be >= 1, got 0"),
    (
        "deploy/secure.py",
        ["--credentials", "/nonexistent/creds"],
        "--credentials: /nonexistent/creds is not a folder",
    ),
    ("deploy/secure.py", ["--port", "65536"], "--port: must be a port in 0..65535, got 65536"),
    (
        "deploy/secure.py",
        ["--candidate-llm", "/nonexistent/llm"],
        "--candidate-llm: /nonexistent/llm is not a folder",
    ),
    ("deploy/secure.py", ["--candidate-address", "localhost"], "--candidate-address: must be host:port"),
    ("deploy/secure.py", ["--candidate-address", "h:port"], "--candidate-address: must be host:port"),
    ("benchmarks/candidate_service_load.py", ["--clients", "0"], "--clients: must be >= 1, got 0"),
    ("benchmarks/candidate_service_load.py", ["--seconds", "inf"], "--seconds: must be a finite number"),
    (
        "benchmarks/candidate_service_load.py",
        ["--invalid-share", "1.5"],
        "--invalid-share: must be in [0, 1]",
    ),
    (
        "benchmarks/candidate_service_load.py",
        ["--llm-path", "/nonexistent"],
        "--llm-path: /nonexistent is not a folder",
    ),
    ("benchmarks/candidate_service_load.py", ["--source", "llm"], "--source llm needs --llm-path"),
    (
        "benchmarks/candidate_service_throughput.py",
        ["--concurrency", "8", "0"],
        "--concurrency: must be >= 1, got 0",
    ),
    ("benchmarks/candidate_service_throughput.py", ["--n", "-3"], "--n: must be >= 1, got -3"),
    ("benchmarks/candidate_service_throughput.py", ["--timeout", "0"], "--timeout: must be > 0, got 0"),
    ("benchmarks/centralized_baselines.py", ["--models", "nosuch"], "--models: invalid choice: 'nosuch'"),
    ("benchmarks/data_split.py", ["--runs", "0"], "--runs: must be >= 1, got 0"),
    (
        "benchmarks/centralized_baselines.py",
        ["--ml100k", "/nonexistent"],
        "--ml100k: /nonexistent is not a folder",
    ),
    ("benchmarks/federated_scaling.py", ["--nodes", "10", "0"], "--nodes: must be >= 1, got 0"),
    ("benchmarks/federated_scaling.py", ["--sampled", "-1"], "--sampled: must be >= 0, got -1"),
    (
        "benchmarks/federated_vs_centralized.py",
        ["--centralized-ndcg10", "2"],
        "--centralized-ndcg10: must be in [0, 1]",
    ),
    ("benchmarks/federated_vs_centralized.py", ["--rounds", "0"], "--rounds: must be >= 1, got 0"),
    ("benchmarks/onnx_latency.py", ["--models", "bert"], "--models: invalid choice: 'bert'"),
    ("benchmarks/onnx_latency.py", ["--runs", "0"], "--runs: must be >= 1, got 0"),
    (
        "benchmarks/onnx_latency.py",
        ["--state-dict", "/nonexistent.pt"],
        "--state-dict: /nonexistent.pt is not a file",
    ),
    ("benchmarks/ttt_streaming.py", ["--lengths", "10", "-1"], "--lengths: must be >= 1, got -1"),
    ("benchmarks/ttt_streaming.py", ["--warmup", "-1"], "--warmup: must be >= 0, got -1"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "arguments", "named"), CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES]
)
def test_a_bad_command_line_value_is_a_clean_usage_error(
    script: str, arguments: list[str], named: str
) -> None:
    done = subprocess.run(
        [sys.executable, script, *arguments], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert named in done.stderr, done.stderr[-2000:]


def test_the_argument_types_refuse_and_accept() -> None:
    import argparse

    from lsc4rec.argument_types import fraction, host_port, non_negative_int, port, positive_float

    assert host_port("[::1]:50051") == "[::1]:50051" and port("0") == 0 and fraction("1") == 1.0
    assert non_negative_int("0") == 0 and positive_float("0.5") == 0.5
    for convert, text in ((port, "-1"), (host_port, ":50051"), (fraction, "-0.1"), (positive_float, "nan")):
        with pytest.raises(argparse.ArgumentTypeError):
            convert(text)
