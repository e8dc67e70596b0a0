"""Library chatter stays out of the logs unless asked for; warnings nobody can act on are dropped."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import lsc4rec  # noqa: F401  (importing the package quiets the libraries)
from lsc4rec.logs import THIRD_PARTY_LOGGERS, FlowerPerNodeChatter, UnactionableWarnings


def test_importing_the_package_puts_libraries_at_warning() -> None:
    # In a fresh process: a library imported by another test (ray's command line) may set its own level.
    probe = (
        "import json, logging, lsc4rec; from lsc4rec.logs import THIRD_PARTY_LOGGERS as names; "
        "print(json.dumps({n: logging.getLogger(n).getEffectiveLevel() for n in (*names, 'lsc4rec')}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "LSC4REC_THIRD_PARTY_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    levels = json.loads(done.stdout.strip().splitlines()[-1])
    assert {name for name in THIRD_PARTY_LOGGERS if levels[name] != logging.WARNING} == set(), levels
    assert levels["lsc4rec"] != logging.ERROR


def _level_in_fresh_process(value: str) -> subprocess.CompletedProcess:
    probe = "import logging, lsc4rec; print(logging.getLogger('onnxscript').level)"
    env = {**os.environ, "LSC4REC_THIRD_PARTY_LOG_LEVEL": value}
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)


def test_the_libraries_can_be_heard_again_and_a_bad_level_is_named() -> None:
    assert _level_in_fresh_process("info").stdout.strip() == str(logging.INFO)
    bad = _level_in_fresh_process("loud")
    assert bad.returncode != 0 and "LSC4REC_THIRD_PARTY_LOG_LEVEL='LOUD' is not a logging level" in bad.stderr


def test_unactionable_warnings_are_dropped_and_others_kept() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("torch.onnx", logging.WARNING, __file__, 1, message, None, None)

    keep = UnactionableWarnings()
    assert not keep.filter(record("torchvision is not installed. Skipping torchvision::nms"))
    assert keep.filter(record("the graph has a dynamic dimension the export could not name"))


def test_an_onnx_export_logs_nothing_from_the_exporter(tmp_path, caplog) -> None:
    from lsc4rec.client.onnx_runtime import export_srm
    from lsc4rec.models.srm import build_srm

    with caplog.at_level(logging.INFO):
        export_srm(build_srm("sasrec", 30, hidden_size=8, max_len=6), tmp_path / "srm.onnx", 6, "all")
    chatter = [r for r in caplog.records if r.name.startswith(("torch", "onnxscript", "onnx_ir"))]
    assert not chatter, [f"{r.name}: {r.getMessage()[:80]}" for r in chatter[:5]]
    assert (tmp_path / "srm.onnx").stat().st_size > 0


def test_flowers_per_node_dp_lines_are_dropped_and_its_round_log_kept() -> None:
    def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("flwr", level, __file__, 1, message, None, None)

    keep = FlowerPerNodeChatter()
    assert not keep.filter(record("aggregate_fit: parameters are clipped by value: 1.0000."))
    assert keep.filter(record("aggregate_fit: central DP noise with 0.0063 stdev added"))
    assert keep.filter(record("[ROUND 3]"))
    assert keep.filter(record("aggregate_fit: parameters are clipped by value: 1.0000.", logging.WARNING))
    # Installed on Flower's logger when the package is imported (libraries at WARNING by default).
    assert any(isinstance(f, FlowerPerNodeChatter) for f in logging.getLogger("flwr").filters)
