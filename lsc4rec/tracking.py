"""Tracked runs: an entry point's config, per-epoch / per-round metrics and final table, as they happen.

Every entry point opens a :class:`RunTracker` on its run folder. TensorBoard event files go to
``<run folder>/tensorboard/``, so ``tensorboard --logdir outputs`` shows every run side by side, each named by
its folder; MLflow and Weights & Biases receive the same when the user installs one and sets its key
(``conf/tracking/default.yaml``: ``tracking.tensorboard``, ``tracking.mlflow``, ``tracking.wandb``;
docs/tracking.md).

What a tracker logs:

- the run's resolved config, when it opens: as text (YAML) and, at the end, as TensorBoard hparams
  (MLflow params, the W&B run's config);
- scalars under a section as they happen: ``epoch/...`` (:meth:`RunTracker.log_epoch`, step = epoch),
  ``round/...`` (:meth:`RunTracker.log_round`, step = round), or any history at the end
  (:meth:`RunTracker.log_history`); nested metrics become ``/``-separated tags
  (``round/server_valid/NDCG@10``);
- the final summary (:meth:`RunTracker.finish`): every number as ``final/...`` and a Markdown table.

A tracker opens its backends at the first thing it logs, so a run refused for its input leaves no files. A
backend that fails (a tracking server down, a full disk) logs one WARNING and is dropped: tracking never stops
a training run. Nothing is downloaded; MLflow and W&B are never imported unless they are switched on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

__all__ = [
    "AUTO",
    "TENSORBOARD_DIR",
    "RunTracker",
    "TrackingSettings",
    "active_backends",
    "flat_config",
    "flat_scalars",
    "summary_markdown",
]

logger = logging.getLogger(__name__)

#: The folder inside a run folder that holds its TensorBoard event files.
TENSORBOARD_DIR = "tensorboard"
#: ``tracking.mlflow`` / ``tracking.wandb``: on when the package is installed and keyed.
AUTO = "auto"
#: The project name an MLflow experiment / W&B project gets unless the environment names one.
PROJECT = "lsc4rec"


@dataclass(frozen=True)
class TrackingSettings:
    """Which trackers a run logs to (``conf/tracking/default.yaml``): TensorBoard on or off; MLflow and W&B
    ``auto`` (when installed and keyed), ``true`` (required: refused when not installed or not keyed) or
    ``false``."""

    tensorboard: bool = True
    mlflow: bool | str = AUTO
    wandb: bool | str = AUTO

    def __post_init__(self) -> None:
        for name in ("mlflow", "wandb"):
            value = getattr(self, name)
            if isinstance(value, str) and value != AUTO:
                raise ValueError(f"tracking.{name} must be auto, true or false, got {value!r}")


# ------------------------------------------------------------------------------------ which backends
@dataclass(frozen=True)
class _External:
    """A third-party tracker: its module, and the environment that keys it."""

    module: str
    keyed: Callable[[Mapping[str, str]], bool]
    key_hint: str


EXTERNAL: dict[str, _External] = {
    "mlflow": _External("mlflow", lambda env: bool(env.get("MLFLOW_TRACKING_URI")), "MLFLOW_TRACKING_URI"),
    "wandb": _External(
        "wandb",
        lambda env: bool(env.get("WANDB_API_KEY")) or env.get("WANDB_MODE") == "offline",
        "WANDB_API_KEY (or WANDB_MODE=offline)",
    ),
}


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (MLflow takes seconds to import)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def active_backends(settings: TrackingSettings, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The backends a run with ``settings`` logs to, in order: ``tensorboard`` when on; ``mlflow`` / ``wandb``
    when ``true``, or ``auto`` and both installed and keyed (``environ``, default ``os.environ``).

    Raises ``ValueError`` naming the key for a backend set to ``true`` that is not installed or not keyed.
    """
    env = os.environ if environ is None else environ
    names = ["tensorboard"] if settings.tensorboard else []
    for name, spec in EXTERNAL.items():
        wanted = getattr(settings, name)
        if wanted is False:
            continue
        installed, keyed = _importable(spec.module), spec.keyed(env)
        if wanted is True and not installed:
            raise ValueError(
                f"tracking.{name}=true but the {spec.module} package is not installed (pip install "
                f"{spec.module}, or set tracking.{name}=auto / false)"
            )
        if wanted is True and not keyed:
            raise ValueError(
                f"tracking.{name}=true but {spec.key_hint} is not set (set it, or tracking.{name}=auto / "
                "false)"
            )
        if installed and keyed:
            names.append(name)
    return tuple(names)


# ------------------------------------------------------------------------------------------ flattening
def _plain(value: Any) -> Any:
    """numpy / torch scalars as Python numbers; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, str | bytes):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _label(row: Any) -> str | None:
    """The name of a labelled row of a list (``{"setting": ...}`` or ``{"name": ...}``), else None."""
    if isinstance(row, Mapping):
        for key in ("setting", "name"):
            if isinstance(row.get(key), str):
                return row[key]
    return None


def _leaves(value: Any, prefix: str, sep: str) -> Iterator[tuple[str, Any]]:
    """``(key, leaf)`` for every scalar leaf (number, string, bool, None) of nested mappings.

    A list of labelled rows (each with a ``setting`` or ``name``) is walked by label; any other list is a
    history or a value, not a leaf: :func:`flat_config` writes it whole, :func:`flat_scalars` leaves it out.
    """
    value = _plain(value)
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}{sep}{key}" if prefix else str(key), sep)
    elif isinstance(value, list | tuple):
        labels = [_label(row) for row in value]
        if value and all(labels) and len(set(labels)) == len(labels):
            for label, row in zip(labels, value, strict=True):
                rest = {k: v for k, v in row.items() if k not in ("setting", "name")}
                yield from _leaves(rest, f"{prefix}{sep}{label}" if prefix else str(label), sep)
    elif value is None or isinstance(value, str | int | float | bool):
        yield prefix, value


def flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of nested ``values`` by ``/``-joined key (``valid/full/NDCG@10``), under ``prefix``;
    booleans, strings and unlabelled lists left out."""
    return {
        key: float(leaf)
        for key, leaf in _leaves(values, prefix, "/")
        if isinstance(leaf, int | float) and not isinstance(leaf, bool)
    }


def flat_config(config: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """The config's leaves by dotted key (``train.lr``); a list as its JSON text, null as ``"null"``."""
    out: dict[str, str | int | float | bool] = {}

    def walk(node: Any, prefix: str) -> None:
        node = _plain(node)
        if isinstance(node, Mapping):
            for key, item in node.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, list | tuple):
            out[prefix] = json.dumps(node, default=str)
        elif node is None:
            out[prefix] = "null"
        elif isinstance(node, str | int | float | bool):
            out[prefix] = node
        else:
            out[prefix] = str(node)

    walk(config, "")
    return out


def _cell(value: Any) -> str:
    """One Markdown table cell."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The final summary as Markdown: its ``final_table`` rows (the whole system's) when it has one, then
    every scalar leaf as ``| key | value |``."""
    parts = ["## Final results\n"]
    table = summary.get("final_table")
    if isinstance(table, list) and table and all(isinstance(row, Mapping) for row in table):
        columns = list(dict.fromkeys(key for row in table for key in row))
        parts.append("| " + " | ".join(columns) + " |")
        parts.append("|" + " --- |" * len(columns))
        parts.extend("| " + " | ".join(_cell(row.get(c, "-")) for c in columns) + " |" for row in table)
        parts.append("")
    parts.append("| key | value |")
    parts.append("| --- | --- |")
    parts.extend(
        f"| {_cell(key)} | {_cell(leaf)} |"
        for key, leaf in _leaves({k: v for k, v in summary.items() if k != "final_table"}, "", "/")
    )
    return "\n".join(parts) + "\n"


def _config_text(config: Mapping[str, Any]) -> str:
    """The config as YAML, indented as a Markdown code block (TensorBoard's text view renders Markdown)."""
    try:
        import yaml

        text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
    except Exception:  # a value YAML cannot write: JSON writes anything as text
        text = json.dumps(config, indent=2, default=str)
    return "\n".join("    " + line for line in text.splitlines())


# ------------------------------------------------------------------------------------------- backends
class _Backend(Protocol):
    """One place metrics go (TensorBoard files, an MLflow run, a W&B run)."""

    name: str

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log ``values`` (tag -> number, tags prefixed by their section) at ``step``."""

    def final(self, values: Mapping[str, float], markdown: str) -> None:
        """Log the final numbers (tags ``final/...``) and the final table."""

    def close(self, ok: bool) -> None:
        """Flush and close; ``ok`` False when the run failed."""


class _TensorBoard:
    """Event files in ``<run folder>/tensorboard/`` (torch's ``SummaryWriter``)."""

    name = "tensorboard"

    def __init__(self, folder: Path, config: Mapping[str, Any], flat: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / TENSORBOARD_DIR))
        self.flat = flat
        self.writer.add_text("config", _config_text(config), 0)
        self.writer.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One scalar per tag; flushed at once so a watching ``tensorboard`` sees it (an epoch or a round
        takes far longer than the write)."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def final(self, values: Mapping[str, float], markdown: str) -> None:
        """The final numbers, the table as text, and the config as hparams against the final numbers."""
        from torch.utils.tensorboard.summary import hparams

        for tag, value in values.items():
            self.writer.add_scalar(tag, value, 0)
        self.writer.add_text("final_table", markdown, 0)
        # Written into this run's own folder (SummaryWriter.add_hparams would open a sub-run per call), so the
        # HParams view lists each run folder once, its config against its final numbers.
        writer = self.writer._get_file_writer()
        for summary in hparams(dict(self.flat), dict(values)):
            writer.add_summary(summary)
        self.writer.flush()

    def close(self, ok: bool) -> None:
        """Flush and close the event file."""
        self.writer.close()


def _mlflow_key(key: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, ``_ - . / :`` and spaces; no ``@``)."""
    return re.sub(r"[^\w\-./ :]", "_", key.replace("@", "_at_"))[:250]


class _MLflow:
    """An MLflow run in ``$MLFLOW_EXPERIMENT_NAME`` (default ``lsc4rec``), named by the run folder.

    Uses ``MlflowClient`` with the run's id rather than the fluent API's one active run, so runs that open
    inside another (the privacy sweep's settings) never log into each other.
    """

    name = "mlflow"

    def __init__(self, folder: Path, config: Mapping[str, Any], flat: Mapping[str, Any]) -> None:
        import mlflow
        from mlflow.entities import Param

        self.client = mlflow.MlflowClient()
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(experiment_name)
        )
        run = self.client.create_run(
            experiment_id, run_name=folder.name, tags={"lsc4rec.run_folder": str(folder)}
        )
        self.run_id = run.info.run_id
        # MLflow takes at most 100 params per call and 500 characters per value (older servers).
        params = [Param(_mlflow_key(k), str(v)[:500]) for k, v in flat.items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def _metrics(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), float(v), stamp, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """The scalars as MLflow metrics at ``step``."""
        self._metrics(step, values)

    def final(self, values: Mapping[str, float], markdown: str) -> None:
        """The final numbers as metrics and the table as the artifact ``final_table.md``."""
        self._metrics(0, values)
        self.client.log_text(self.run_id, markdown, "final_table.md")

    def close(self, ok: bool) -> None:
        """End the run: FINISHED, or FAILED when the run failed."""
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class _WandB:
    """A W&B run in ``$WANDB_PROJECT`` (default ``lsc4rec``), named by the run folder, its files in it.

    Each section gets its own step axis (``epoch/step``, ``round/step``): W&B's own step must only grow, and a
    run logs epochs, rounds and end-of-run histories on different clocks.
    """

    name = "wandb"

    def __init__(self, folder: Path, config: Mapping[str, Any], flat: Mapping[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT,
            name=folder.name,
            dir=str(folder),
            config=dict(config),
        )
        self.sections: set[str] = set()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """The scalars against their section's step axis."""
        by_section: dict[str, dict[str, float]] = {}
        for tag, value in values.items():
            by_section.setdefault(tag.split("/", 1)[0], {})[tag] = value
        for section, part in by_section.items():
            if section not in self.sections:
                self.run.define_metric(f"{section}/step")
                self.run.define_metric(f"{section}/*", step_metric=f"{section}/step")
                self.sections.add(section)
            self.run.log({f"{section}/step": step, **part})

    def final(self, values: Mapping[str, float], markdown: str) -> None:
        """The final numbers into the run's summary and the table as a W&B table."""
        self.run.summary.update(dict(values))
        rows = [[key, value] for key, value in values.items()]
        self.run.log({"final_table": self.wandb.Table(columns=["metric", "value"], data=rows)})

    def close(self, ok: bool) -> None:
        """Finish the run (exit code 1 when the run failed)."""
        self.run.finish(exit_code=0 if ok else 1)


OPENERS: dict[str, Callable[[Path, Mapping[str, Any], Mapping[str, Any]], _Backend]] = {
    "tensorboard": _TensorBoard,
    "mlflow": _MLflow,
    "wandb": _WandB,
}


# -------------------------------------------------------------------------------------------- tracker
class RunTracker:
    """One run's trackers: its config, its scalars as they happen, its final table.

    ``folder``: the run folder (TensorBoard writes to ``folder/tensorboard``); ``settings``: the run's
    ``tracking.*``; ``config``: the run's resolved config (as written to ``metrics.json``). Constructing it
    checks ``settings`` against what is installed (:func:`active_backends`) and writes nothing: the backends
    open at the first call that logs. Use it as a context manager, or call :meth:`finish` (the run completed)
    or :meth:`close` (it did not).
    """

    def __init__(
        self,
        folder: Path,
        settings: TrackingSettings,
        config: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.names = active_backends(settings, environ)
        self.config = dict(config)
        self._backends: list[_Backend] | None = None
        self._closed = False

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends still logging (opened and not dropped after a failure; before opening: all)."""
        if self._backends is None:
            return self.names
        return tuple(backend.name for backend in self._backends)

    def _warn(self, name: str, action: str, error: BaseException) -> None:
        logger.warning(
            "tracking: %s failed to %s (%s: %s); the run goes on without %s",
            name,
            action,
            type(error).__name__,
            error,
            name,
        )

    def _open(self) -> list[_Backend]:
        """The backends, opened on first use (each logs the config as it opens)."""
        if self._backends is None:
            self._backends = []
            flat = flat_config(self.config)
            for name in self.names:
                try:
                    self._backends.append(OPENERS[name](self.folder, self.config, flat))
                except Exception as error:
                    self._warn(name, "open", error)
        return self._backends

    def _each(self, action: str, call: Callable[[_Backend], None]) -> None:
        """``call`` on every open backend; one that raises is warned about once and dropped."""
        if self._closed or not self.names:
            return
        backends = self._open()
        for backend in list(backends):
            try:
                call(backend)
            except Exception as error:
                self._warn(backend.name, action, error)
                backends.remove(backend)
                # Release what it holds (a file, a run marked failed) if it still can; it was warned about.
                with contextlib.suppress(Exception):
                    backend.close(False)

    def log_scalars(self, section: str, step: int, values: Mapping[str, Any]) -> None:
        """Every number of nested ``values`` as ``section/<key path>`` at ``step`` (int)."""
        scalars = flat_scalars(values, section)
        if scalars:
            self._each("log", lambda backend: backend.scalars(int(step), scalars))

    def log_epoch(self, record: Mapping[str, Any], section: str = "epoch") -> None:
        """One epoch's record of :func:`lsc4rec.training.fit` (step = its ``epoch``) under ``section``."""
        self.log_scalars(section, int(record["epoch"]), {k: v for k, v in record.items() if k != "epoch"})

    def epoch_logger(self, section: str = "epoch") -> Callable[[dict], None]:
        """An ``on_epoch`` callback of :func:`lsc4rec.training.fit` logging each epoch under ``section``."""
        return lambda record: self.log_epoch(record, section)

    def log_round(self, row: Mapping[str, Any]) -> None:
        """One federated round's row of ``metrics.json`` under ``round/`` (step = its ``round``)."""
        self.log_scalars("round", int(row["round"]), {k: v for k, v in row.items() if k != "round"})

    def log_history(self, section: str, rows: Iterable[Mapping[str, Any]], step_key: str) -> None:
        """A finished history (epochs, ratios, ...): each row under ``section`` at its ``step_key``."""
        for row in rows:
            self.log_scalars(section, int(row[step_key]), {k: v for k, v in row.items() if k != step_key})

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Log the final summary (numbers as ``final/...``, the Markdown table, the config as hparams) and
        close: the run completed."""
        values, markdown = flat_scalars(summary, "final"), summary_markdown(summary)
        self._each("log the final table", lambda backend: backend.final(values, markdown))
        self._shut(ok=True)

    def close(self) -> None:
        """Close without a final table: the run did not complete (MLflow: FAILED). No-op after
        :meth:`finish`."""
        self._shut(ok=False)

    def _shut(self, ok: bool) -> None:
        if self._closed:
            return
        if self._backends is not None:
            self._each("close", lambda backend: backend.close(ok))
        self._closed = True

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
