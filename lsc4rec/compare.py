"""Compare finished runs: ``python -m lsc4rec.compare outputs/A outputs/B ... [--plot PATH]``.

Each argument is a run folder holding the ``metrics.json`` every entry point writes: a federated run's
(``final``, ``rounds``, ``config``, ``wall_seconds``) or a centralized one's (``final``, ``epochs``, ...). A
part missing from a file shows as ``-``. It prints one table: the config keys whose values differ between
the runs (dotted, ``run_name`` left out: the columns name the runs), then the final model's test NDCG@10 /
HR@10, the whole system's final-table rows, seconds and bytes. It draws the validation curves (the server's
NDCG@10 per round, round 0 being the warm start where there is one; valid NDCG@10 per epoch) in one plot,
writes the same numbers as JSON beside it and ends with the ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless, as in lsc4rec.reporting
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from lsc4rec.reporting import emit_result, write_json

__all__ = [
    "Run",
    "build_table",
    "differing_config",
    "flatten",
    "format_table",
    "load_run",
    "main",
    "plot_curves",
]

METRIC = "NDCG@10"
#: Config keys that name a run rather than configure it: the table's columns already say which run is which.
IGNORED_KEYS = frozenset({"run_name"})
MISSING = "-"


class RunFolderError(ValueError):
    """A run folder that cannot be compared; the message names the folder and why."""


@dataclass
class Run:
    """What one run folder's ``metrics.json`` says, as far as it says it."""

    label: str
    folder: Path
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    #: ``(round or epoch, validation NDCG@10)``.
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_seconds: float | None = None
    status: str | None = None


def _get(node: Any, *keys: str) -> Any:
    """``node[k1][k2]...``, or None where a step is missing or not an object."""
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, null, a string, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted key: value}``; lists and scalars are values."""
    if not isinstance(config, Mapping):
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _curve(metrics: Mapping[str, Any]) -> tuple[str, list[tuple[int, float]]]:
    """The run's kind and its validation curve (federated: per round; centralized: per epoch)."""
    points: list[tuple[int, float]] = []
    if isinstance(metrics.get("rounds"), list):
        warm = _number(_get(metrics, "final", "round_0_valid", METRIC))
        if warm is not None:
            points.append((0, warm))
        for row in metrics["rounds"]:
            value, step = _number(_get(row, "server_valid", METRIC)), _number(_get(row, "round"))
            if value is not None and step is not None:
                points.append((int(step), value))
        return "federated", points
    if isinstance(metrics.get("epochs"), list):
        for row in metrics["epochs"]:
            value, step = _number(_get(row, "valid", "full", METRIC)), _number(_get(row, "epoch"))
            if value is not None and step is not None:
                points.append((int(step), value))
        return "centralized", points
    return "unknown", points


def load_run(folder: Path, label: str | None = None) -> Run:
    """Read ``folder/metrics.json``; RunFolderError (naming the folder) when it is missing or not a JSON
    object. Parts it lacks stay empty."""
    path = folder / "metrics.json"
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: not a folder (expected a run folder holding metrics.json)")
    if not path.is_file():
        raise RunFolderError(f"{folder}: no metrics.json (not a run folder, or the run wrote nothing yet)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(metrics, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    kind, curve = _curve(metrics)
    config = metrics.get("config")
    final = metrics.get("final")
    return Run(
        label=label or folder.name or str(folder),
        folder=folder,
        kind=kind,
        config=flatten(config) if isinstance(config, Mapping) else {},
        final=final if isinstance(final, dict) else {},
        curve=curve,
        wall_seconds=_number(metrics.get("wall_seconds")),
        status=metrics.get("status") if isinstance(metrics.get("status"), str) else None,
    )


def differing_config(runs: Sequence[Run]) -> list[str]:
    """The dotted config keys whose value differs between ``runs`` (absent in some counts as differing)."""
    keys = sorted({key for run in runs for key in run.config} - IGNORED_KEYS)
    absent = object()
    differing = []
    for key in keys:
        values = [json.dumps(run.config.get(key, absent), sort_keys=True, default=repr) for run in runs]
        if len(set(values)) > 1:
            differing.append(key)
    return differing


def _value(value: Any, limit: int = 32) -> str:
    """A config value for a table cell: JSON spelling (null, true, [1, 2]), cut to ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _final_table(run: Run) -> dict[str, Mapping[str, Any]]:
    rows = run.final.get("final_table")
    if not isinstance(rows, list):
        return {}
    return {str(row["setting"]): row for row in rows if isinstance(row, Mapping) and "setting" in row}


def _metric_rows(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    """The metric part of the table: test NDCG@10 / HR@10, the final-table rows, seconds, bytes."""
    rows: list[tuple[str, list[str]]] = [
        ("kind", [run.kind for run in runs]),
        ("status", [run.status or MISSING for run in runs]),
    ]
    for name in ("NDCG@10", "HR@10"):
        rows.append((f"test {name}", [_fmt(_number(_get(run.final, "test", "full", name))) for run in runs]))
    best = [_number(run.final.get("best_round", run.final.get("best_epoch"))) for run in runs]
    rows.append(("best round / epoch", [MISSING if b is None else str(int(b)) for b in best]))
    settings: list[str] = []
    for run in runs:
        settings += [name for name in _final_table(run) if name not in settings]
    for setting in settings:
        cells = []
        for run in runs:
            row = _final_table(run).get(setting, {})
            ndcg, hr = _number(row.get("NDCG@10")), _number(row.get("HR@10"))
            cells.append(MISSING if ndcg is None and hr is None else f"{_fmt(ndcg)} / {_fmt(hr)}")
        rows.append((f"final table: {setting} (NDCG@10 / HR@10)", cells))
    rows.append(("wall seconds", [_fmt(run.wall_seconds, 1) for run in runs]))
    for key, label in (("bytes_sent", "MiB sent"), ("bytes_received", "MiB received")):
        values = [_number(run.final.get(key)) for run in runs]
        if any(v is not None for v in values):
            rows.append((label, [_fmt(None if v is None else v / 2**20, 1) for v in values]))
    return rows


def build_table(runs: Sequence[Run]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The header and rows of the comparison: the differing config keys first, then the metrics."""
    header = ["", *[run.label for run in runs]]
    rows = [(key, [_value(run.config.get(key, MISSING)) for run in runs]) for key in differing_config(runs)]
    return header, rows + _metric_rows(runs)


def format_table(header: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A Markdown table (pastes into the docs), columns padded to line up in a terminal."""
    lines = [[cell.replace("|", "\\|") for cell in line] for line in (header, *[[n, *c] for n, c in rows])]
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * max(width, 3) for width in widths) + " |"
    return "\n".join([render(lines[0]), rule, *[render(line) for line in lines[1:]]])


def plot_curves(runs: Sequence[Run], path: Path) -> Path:
    """One plot of every run's validation NDCG@10: per round (federated, solid) or per epoch (centralized,
    dashed); a run without a curve is left out of it."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        if run.curve:
            steps, values = zip(*run.curve, strict=True)
            style = "-" if run.kind == "federated" else "--"
            ax.plot(steps, values, marker=".", linestyle=style, label=f"{run.label} ({run.kind})")
    kinds = {run.kind for run in runs if run.curve}
    axis = [name for name, kind in (("round", "federated"), ("epoch", "centralized")) if kind in kinds]
    ax.set_xlabel(" / ".join(axis) or "round / epoch")
    ax.set_ylabel(f"validation {METRIC} (full ranking)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if kinds:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _labels(folders: Sequence[Path]) -> list[str]:
    """Column labels: each folder's name, or the path as given where two names collide."""
    names = [folder.name or str(folder) for folder in folders]
    return [
        name if names.count(name) == 1 else str(folder) for name, folder in zip(names, folders, strict=True)
    ]


def _summary(runs: Sequence[Run], plot: Path, json_path: Path) -> dict[str, Any]:
    """The RESULT / JSON payload: the differing config and each run's numbers."""
    return {
        "runs": [str(run.folder) for run in runs],
        # {key: {run: value}}: a run that lacks the key is left out (null is a value).
        "differing_config": {
            key: {run.label: run.config[key] for run in runs if key in run.config}
            for key in differing_config(runs)
        },
        "metrics": {
            run.label: {
                "kind": run.kind,
                "status": run.status,
                "test_NDCG@10": _number(_get(run.final, "test", "full", "NDCG@10")),
                "test_HR@10": _number(_get(run.final, "test", "full", "HR@10")),
                "final_table": {
                    name: {m: _number(row.get(m)) for m in ("NDCG@10", "HR@10")}
                    for name, row in _final_table(run).items()
                },
                "wall_seconds": run.wall_seconds,
                "bytes_sent": _number(run.final.get("bytes_sent")),
                "bytes_received": _number(run.final.get("bytes_received")),
                "valid_curve": [[step, value] for step, value in run.curve],
            }
            for run in runs
        },
        "plot": str(plot),
        "json": str(json_path),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lsc4rec.compare",
        description="Compare run folders (each holding metrics.json): one table, one plot, a RESULT line.",
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_FOLDER", help="e.g. outputs/whole-v6")
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("outputs/compare.png"),
        help="where the validation curves go (default outputs/compare.png); the JSON goes beside it",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and return the exit status: 0, or 2 with a one-line error naming a folder without
    a readable metrics.json (argparse's own usage errors also exit with 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.plot.suffix.lower() != ".png":
        parser.error(f"argument --plot: {args.plot} must end in .png")
    runs: list[Run] = []
    for folder, label in zip(args.runs, _labels(args.runs), strict=True):
        try:
            runs.append(load_run(folder.expanduser(), label))
        except RunFolderError as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 2
    header, rows = build_table(runs)
    print(format_table(header, rows))
    plot = plot_curves(runs, args.plot)
    json_path = args.plot.with_suffix(".json")
    summary = _summary(runs, plot, json_path)
    write_json(json_path, summary)
    print(f"plot: {plot}\njson: {json_path}")
    emit_result(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
