"""Benchmark: TTT4Rec on the device, streaming update per interaction vs re-encoding the whole history.

    python benchmarks/ttt_streaming.py                      # lengths 10 50 200, both TTT layers
    python benchmarks/ttt_streaming.py --reps 500 --lengths 10 50 200 400

For each inner model (TTT-Linear, TTT-MLP) and history length n, a TTT4Rec with the paper's settings
(d=64, 1 block, 4 heads, SwiGLU 256, mini-batch 8) and a Beauty-size catalogue (12,101 items) serves one
user (batch 1) on one CPU thread, in inference mode. After a history of n items, one more interaction
arrives; the timed operations are

* ``stream+score``: ``TTT4Rec.step`` from the state of the n-item history, then scores of all items;
* ``reencode+score``: ``score_all`` of the (n+1)-item history (what a model without state must do);
* ``step`` and ``encode`` alone (the same two without the catalogue scoring).

Each is repeated ``--reps`` times, round-robin, after ``--warmup`` untimed runs (``step`` does not modify
its input state, so every repetition does the same work). Writes ``outputs/benchmarks/ttt_streaming.json``
and ``ttt_streaming.png`` and prints ``RESULT {json}``. The streamed and re-encoded scores are compared too.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from lsc4rec.argument_types import non_negative_int, positive_int
from lsc4rec.models.srm import TTT4Rec
from lsc4rec.reporting import emit_result, write_json

BEAUTY_ITEMS = 12_101
OPERATIONS = ("stream+score", "reencode+score", "step", "encode")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", nargs="+", type=positive_int, default=[10, 50, 200])
    parser.add_argument("--layers", nargs="+", default=["linear", "mlp"], choices=["linear", "mlp"])
    parser.add_argument("--num-items", type=positive_int, default=BEAUTY_ITEMS)
    parser.add_argument("--reps", type=positive_int, default=200)
    parser.add_argument("--warmup", type=non_negative_int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    return parser.parse_args()


def time_ms(ops: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, dict[str, float]]:
    """p50 / p99 / mean wall time in milliseconds of each operation over ``reps`` timed calls.

    The operations are timed round-robin (one call of each per repetition), so load changes on a shared
    machine affect them alike instead of biasing whichever ran during a busy spell.
    """
    for _ in range(warmup):
        for fn in ops.values():
            fn()
    samples = {name: np.empty(reps) for name in ops}
    for i in range(reps):
        for name, fn in ops.items():
            start = time.perf_counter_ns()
            fn()
            samples[name][i] = (time.perf_counter_ns() - start) / 1e6
    return {
        name: {
            "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)),
            "mean": float(values.mean()),
        }
        for name, values in samples.items()
    }


def state_bytes(model: TTT4Rec, history: torch.Tensor) -> int:
    """Bytes of one user's streaming state (all TTT layers' fast weights, gradient sums and counters)."""
    state, _ = model.prefill(history)
    tensors = [state.length]
    for layer in state.layers:
        tensors += [*layer.weights.values(), *layer.grad_sums.values(), layer.count]
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_length(model: TTT4Rec, full: torch.Tensor, args: argparse.Namespace) -> dict:
    """Timings for one user with history ``full[:, :-1]`` whose next interaction is ``full[:, -1]``."""
    history, new_item = full[:, :-1], full[:, -1]
    state, _ = model.prefill(history)
    _, hidden = model.step(state, new_item)
    score_diff = (model.score_hidden(hidden)[:, 1:] - model.score_all(full)[:, 1:]).abs().max().item()
    timings = time_ms(
        {
            "stream+score": lambda: model.score_hidden(model.step(state, new_item)[1]),
            "reencode+score": lambda: model.score_all(full),
            "step": lambda: model.step(state, new_item),
            "encode": lambda: model.encode(full),
        },
        args.reps,
        args.warmup,
    )
    return {
        "history_length": history.size(1),
        "ms": timings,
        "speedup_p50": timings["reencode+score"]["p50"] / timings["stream+score"]["p50"],
        "step_vs_encode_p50": timings["encode"]["p50"] / timings["step"]["p50"],
        "max_abs_score_diff": score_diff,
        "state_bytes": state_bytes(model, history),
    }


def bench_layer(layer: str, args: argparse.Namespace) -> list[dict]:
    """All measurements for one inner model, one row per history length."""
    torch.manual_seed(args.seed)
    model = TTT4Rec(args.num_items, max_len=max(args.lengths), ttt={"layer": layer}).eval()
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for length in args.lengths:
        full = torch.randint(1, args.num_items + 1, (1, length + 1), generator=gen)
        row = {"layer": layer, **measure_length(model, full, args)}
        rows.append(row)
        ms = row["ms"]
        print(
            f"{layer:6s} n={length:4d}  stream+score p50 {ms['stream+score']['p50']:.3f} ms "
            f"(p99 {ms['stream+score']['p99']:.3f})  reencode+score p50 "
            f"{ms['reencode+score']['p50']:.3f} ms (p99 {ms['reencode+score']['p99']:.3f})  "
            f"step {ms['step']['p50']:.3f}  encode {ms['encode']['p50']:.3f}  "
            f"|Δscore| {row['max_abs_score_diff']:.1e}",
            flush=True,
        )
    return rows


def plot(rows: list[dict], layers: list[str], path: Path) -> None:
    """p50 latency vs history length per operation, one panel per TTT layer."""
    fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        mine = [r for r in rows if r["layer"] == layer]
        lengths = [r["history_length"] for r in mine]
        for op, style in zip(OPERATIONS, ("o-", "s-", "o--", "s--"), strict=True):
            ax.plot(lengths, [r["ms"][op]["p50"] for r in mine], style, label=op)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("history length (items)")
        ax.set_ylabel("p50 latency per interaction (ms)")
        ax.set_title(f"TTT-{layer.upper() if layer == 'mlp' else 'Linear'}")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle("TTT4Rec on one CPU thread: streaming update vs full re-encode (12,101 items, d=64)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Run the benchmark and report it."""
    args = parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            rows = [row for layer in args.layers for row in bench_layer(layer, args)]
    finally:
        torch.set_num_threads(threads)
    payload = {
        "benchmark": "ttt_streaming",
        "setup": {
            "num_items": args.num_items,
            "hidden_size": 64,
            "num_blocks": 1,
            "num_heads": 4,
            "mini_batch_size": 8,
            "batch_size": 1,
            "threads": 1,
            "reps": args.reps,
            "warmup": args.warmup,
            "torch": torch.__version__,
        },
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out / "ttt_streaming.json", payload)
    plot(rows, args.layers, args.out / "ttt_streaming.png")
    emit_result(
        {
            "benchmark": "ttt_streaming",
            "rows": [
                {
                    "layer": r["layer"],
                    "n": r["history_length"],
                    "stream_score_ms": [round(r["ms"]["stream+score"][q], 3) for q in ("p50", "p99")],
                    "reencode_score_ms": [round(r["ms"]["reencode+score"][q], 3) for q in ("p50", "p99")],
                    "step_ms_p50": round(r["ms"]["step"]["p50"], 3),
                    "encode_ms_p50": round(r["ms"]["encode"]["p50"], 3),
                    "speedup_p50": round(r["speedup_p50"], 2),
                    "max_abs_score_diff": r["max_abs_score_diff"],
                }
                for r in rows
            ],
        }
    )


if __name__ == "__main__":
    main()
