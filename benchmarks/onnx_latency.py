"""Benchmark: on-device scoring latency, ONNX Runtime vs PyTorch eager, per SRM (issue 8).

    python benchmarks/onnx_latency.py                               # every SRM, Beauty-sized catalogue
    python benchmarks/onnx_latency.py --models sasrec --runs 2000 --quantize

Scores ``--candidates`` (50) candidates for one user with a history of ``--history`` (50) items, on one CPU
thread (torch and ONNX Runtime both), with the model configs of ``conf/model/`` and the Beauty catalogue
(12,101 items). Reports p50/p99 milliseconds for each runtime, the speed-up, the ONNX file size, the largest
score difference to PyTorch, and with ``--quantize`` the same for an int8 dynamically quantised file plus its
ranking agreement with fp32 (top-10 overlap of the candidates over random histories). ``--state-dict`` loads
trained SASRec weights (Beauty); then the int8 accuracy cost is also measured where it matters: test NDCG@10
and HR@10 of the fp32 and int8 ONNX files under the sampled protocol (target + 99 seeded negatives) for the
first ``--accuracy-users`` Beauty test users. Writes
``outputs/benchmarks/onnx_latency.json`` and a PNG, prints ``RESULT {json}``. Targets: SASRec ORT p50 <= 1 ms
and >= 2x faster than eager.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from lsc4rec.argument_types import existing_file, positive_int
from lsc4rec.client.onnx_runtime import OnnxScorer, export_srm
from lsc4rec.config import compose_config
from lsc4rec.models.srm import SRM_CLASSES
from lsc4rec.reporting import emit_result, write_json
from lsc4rec.settings import model_config
from lsc4rec.training import build_model_from_config

BEAUTY_ITEMS = 12101


def sampled_test_metrics(scorer: OnnxScorer, max_len: int, users: int) -> dict[str, float]:
    """NDCG@10 / HR@10 of ``scorer`` on the first ``users`` Beauty test users (target + 99 negatives)."""
    from lsc4rec.data import leave_one_out, load_dataset
    from lsc4rec.metrics import RankingAccumulator, target_ranks
    from lsc4rec.training import EvalSet

    split = leave_one_out(load_dataset("beauty", None, "sequences"))
    histories, targets = split.test_histories()[:users], split.test_targets[:users]
    test = EvalSet.build("test", histories, targets, split.num_items, max_len, 256, sampled_negatives=99)
    assert test.negatives is not None
    accumulator = RankingAccumulator((10,))
    for batch in test.batches:
        candidates = torch.cat([batch.targets[:, None], test.negatives[batch.rows]], dim=1)
        scores = scorer.score_candidates(batch.history.numpy(), candidates.numpy())
        accumulator.add(target_ranks(torch.from_numpy(scores), torch.zeros_like(batch.targets)))
    result = accumulator.compute()
    return {"NDCG@10": round(result["NDCG@10"], 5), "HR@10": round(result["HR@10"], 5)}


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 / p99 in milliseconds."""
    values = np.asarray(samples) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 4),
        "p99_ms": round(float(np.percentile(values, 99)), 4),
    }


def time_calls(call, runs: int, warmup: int = 20) -> list[float]:
    """Wall time of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def top10_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of the top-10 candidates two score matrices agree on."""
    top_a = np.argsort(-a, axis=1)[:, :10]
    top_b = np.argsort(-b, axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10.0 for x, y in zip(top_a, top_b, strict=True)]))


def main() -> None:
    """Measure every requested model."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=["sasrec", "gru4rec", "din", "ttt4rec"], choices=sorted(SRM_CLASSES)
    )
    parser.add_argument("--history", type=positive_int, default=50)
    parser.add_argument("--candidates", type=positive_int, default=50)
    parser.add_argument("--runs", type=positive_int, default=1000)
    parser.add_argument(
        "--quantize", action="store_true", help="also measure an int8 dynamically quantised file"
    )
    parser.add_argument(
        "--state-dict", type=existing_file, default=None, help="trained SASRec model.pt (Beauty)"
    )
    parser.add_argument(
        "--accuracy-users", type=positive_int, default=5000, help="test users for the int8 accuracy"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    history = torch.randint(1, BEAUTY_ITEMS + 1, (1, args.history), generator=generator)
    candidates = torch.randint(1, BEAUTY_ITEMS + 1, (1, args.candidates), generator=generator)
    check_histories = torch.randint(1, BEAUTY_ITEMS + 1, (64, args.history), generator=generator)
    check_candidates = torch.randint(1, BEAUTY_ITEMS + 1, (64, args.candidates), generator=generator)
    rows = {}
    for name in args.models:
        cfg = compose_config([f"model={name}"])
        torch.manual_seed(0)
        model = build_model_from_config(model_config(cfg.model), BEAUTY_ITEMS, args.history).eval()
        if args.state_dict is not None and name == "sasrec":
            model.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
        path = export_srm(model, args.out / f"onnx-{name}.onnx", args.history, kind="candidates")
        scorer = OnnxScorer(path, num_items=BEAUTY_ITEMS, kind="candidates", threads=1)
        h, c = history.numpy(), candidates.numpy()
        with torch.no_grad():
            eager = time_calls(lambda m=model: m.score_candidates(history, candidates), args.runs)
            reference = model.score_candidates(check_histories, check_candidates).numpy()
        ort_times = time_calls(lambda s=scorer, h=h, c=c: s.score_candidates(h, c), args.runs)
        ort_scores = scorer.score_candidates(check_histories.numpy(), check_candidates.numpy())
        row = {
            "torch": percentiles(eager),
            "onnxruntime": percentiles(ort_times),
            "speedup_p50": round(float(np.percentile(eager, 50) / np.percentile(ort_times, 50)), 2),
            "file_mb": round(path.stat().st_size / 2**20, 2),
            "max_abs_diff": float(np.abs(ort_scores - reference).max()),
        }
        if args.quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = args.out / f"onnx-{name}-int8.onnx"
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
            q_scorer = OnnxScorer(quantized, num_items=BEAUTY_ITEMS, kind="candidates", threads=1)
            q_times = time_calls(lambda s=q_scorer, h=h, c=c: s.score_candidates(h, c), args.runs)
            q_scores = q_scorer.score_candidates(check_histories.numpy(), check_candidates.numpy())
            row["int8"] = {
                **percentiles(q_times),
                "file_mb": round(quantized.stat().st_size / 2**20, 2),
                "max_abs_diff": float(np.abs(q_scores - reference).max()),
                "top10_overlap_with_fp32": round(top10_overlap(q_scores, reference), 4),
            }
            if args.state_dict is not None and name == "sasrec":
                row["int8"]["test_sampled"] = {
                    "fp32": sampled_test_metrics(scorer, args.history, args.accuracy_users),
                    "int8": sampled_test_metrics(q_scorer, args.history, args.accuracy_users),
                    "users": args.accuracy_users,
                }
        rows[name] = row
        print(name, row, flush=True)
    sasrec = rows.get("sasrec")
    result = {
        "benchmark": "onnx_latency",
        "history": args.history,
        "candidates": args.candidates,
        "threads": 1,
        "models": rows,
    }
    if sasrec is not None:
        result["sasrec_meets_target"] = (
            sasrec["onnxruntime"]["p50_ms"] <= 1.0 and sasrec["speedup_p50"] >= 2.0
        )
    write_json(args.out / "onnx_latency.json", result)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 3.6))
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r["torch"]["p50_ms"] for r in rows.values()], width=0.4, label="PyTorch eager p50")
    ax.bar(xs + 0.2, [r["onnxruntime"]["p50_ms"] for r in rows.values()], width=0.4, label="ONNX Runtime p50")
    ax.set_xticks(xs, list(rows))
    ax.set_ylabel("ms, 1 thread")
    ax.set_title(f"{args.candidates} candidates, history {args.history}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "onnx_latency.png", dpi=110)
    emit_result(result)


if __name__ == "__main__":
    main()
