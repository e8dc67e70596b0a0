"""Benchmark: loading and splitting the embedded Beauty dataset (the first thing every run does).

    python benchmarks/data_split.py               # 5 repetitions, the median against the 2 s target
    python benchmarks/data_split.py --runs 10

Loads Beauty (22,363 users, 198,502 interactions) and splits it leave-one-out, ``--runs`` times in this
process (the reader's caches are not used: every repetition reads the file). Writes
``outputs/benchmarks/data_split.json`` and prints ``RESULT {json}``. Target: the median under 2 s on one core.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from lsc4rec.argument_types import positive_int
from lsc4rec.data import leave_one_out, load_dataset
from lsc4rec.reporting import emit_result, write_json

#: The median seconds a load and split of Beauty may take.
TARGET_SECONDS = 2.0


def measure(runs: int) -> dict[str, float | int | bool]:
    """Load and split Beauty ``runs`` times; the median, min and max seconds, and whether the target holds."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        split = leave_one_out(load_dataset("beauty"))
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "runs": runs,
        "users": len(split.train),
        "median_seconds": median,
        "min_seconds": min(seconds),
        "max_seconds": max(seconds),
        "target_seconds": TARGET_SECONDS,
        "target_met": median < TARGET_SECONDS,
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=positive_int, default=5, help="repetitions (default 5)")
    args = parser.parse_args()
    summary = measure(args.runs)
    write_json(Path("outputs") / "benchmarks" / "data_split.json", summary)
    emit_result(summary)


if __name__ == "__main__":
    main()
