"""Federated training of an SRM on Flower, from the command line (``make run`` runs it with the defaults).

    python -m lsc4rec.simulations.federated                              # flwr run, 4 SuperNodes, Beauty
    python -m lsc4rec.simulations.federated federated.rounds=20 strategy=fedprox
    python -m lsc4rec.simulations.federated federated.runtime=inprocess  # no Ray: the handlers in-process
    python -m lsc4rec.simulations.federated run_name=myrun federated.resume=true   # continue a killed run

``federated.runtime=flower`` starts a private simulation SuperLink, runs ``flwr run`` on this repository with
these overrides, checks the run's final status and exits non-zero unless it completed. Every runtime writes
``outputs/<run_name>/metrics.json`` (per-round metrics, timings, bytes, failures), ``rounds.png``,
``checkpoint.pt`` and the best/last weights, and the last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lsc4rec.cli import exit_on_bad_input
from lsc4rec.config import compose_config, config_dir
from lsc4rec.data import load_dataset
from lsc4rec.reporting import emit_result
from lsc4rec.server.components.registry import check_components
from lsc4rec.server.federated_run import run_federated
from lsc4rec.settings import FederatedRunSettings, federated_settings, group_selections
from lsc4rec.simulations.launch.flower import flwr_run
from lsc4rec.simulations.launch.inprocess import InProcessGrid
from lsc4rec.simulations.launch.text_fallback import text_fallback

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[2]


class FlowerRunFailed(RuntimeError):
    """The Flower run did not complete (failed, timed out, or wrote no results)."""


def untrained_reason(out: Path) -> str | None:
    """Why no round of the finished run in ``out`` aggregated an update, or None when one did (or the run
    had no rounds): a run whose every node failed in every round completes in Flower's eyes, yet its model
    is the one it started from."""
    metrics_path = out / "metrics.json"
    if not metrics_path.is_file():
        return None
    rounds = json.loads(metrics_path.read_text()).get("rounds") or []
    if not rounds or any(float((r.get("train") or {}).get("aggregated", 1)) > 0 for r in rounds):
        return None
    failed = [f for r in rounds for f in r.get("failed_nodes") or []]
    if failed:
        first = failed[0]
        cause = " ".join(str(first.get("reason", "unknown")).split())  # one line
        cause = cause if len(cause) <= 300 else cause[:300] + " ..."
        return (
            f"no round aggregated an update: {len(failed)} node failures over {len(rounds)} rounds, the "
            f"first (round {first.get('round')}, {first.get('stage')}): {cause}"
        )
    return (
        f"no round aggregated an update in {len(rounds)} rounds (no node failed: every node stopped, e.g. "
        "its privacy budget was spent; see the log above)"
    )


def launch(run: FederatedRunSettings, overrides: list[str], out: Path) -> dict:
    """Run the federated job in the configured runtime; return the final summary or raise on failure."""
    # The nodes compose the same config from these overrides (one source of truth: conf/).
    pinned = [o for o in overrides if not o.startswith("run_name=")] + [f"run_name={run.run_name}"]
    # The nodes shlex-split this string: quoted, each override comes back whole with its own quoting (a value
    # like '0,1' stays one string instead of becoming a Hydra list).
    joined = shlex.join(pinned)
    if run.federated.runtime == "inprocess":
        grid = InProcessGrid(run.federated.num_supernodes, {"overrides": joined})
        return run_federated(grid, run, out)
    if not (APP_DIR / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{APP_DIR}/pyproject.toml not found: run from a source checkout of lsc4rec")
    run_timeout = run.federated.launch_timeout
    run = flwr_run(
        APP_DIR,
        {"overrides": joined, "output-dir": str(out.parent)},
        run.federated.num_supernodes,
        timeout=run_timeout,
        ray_address=run.federated.ray_address,
    )
    metrics_path = out / "metrics.json"
    # A run stopped at the launcher's timeout never printed its id.
    name = "the flwr run" if run.run_id is None else f"flwr run {run.run_id}"
    if not run.ok:
        sys.stderr.write(run.log[-6000:])
        hint = ""
        if str(run.status).startswith("timed out"):
            hint = f" (federated.launch_timeout={run_timeout:g} s: raise it for a longer run)"
        raise FlowerRunFailed(f"{name} ended with status {run.status!r} (log above){hint}")
    if not metrics_path.is_file():
        raise FlowerRunFailed(f"{name} completed but wrote no {metrics_path}")
    return json.loads(metrics_path.read_text())["final"]


@hydra.main(config_path=str(config_dir()), config_name="federated_run", version_base="1.3")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    """Command-line entry point (Hydra)."""
    out = Path(HydraConfig.get().runtime.output_dir)
    overrides = list(HydraConfig.get().overrides.task)
    # Typed once, here; keys this run cannot honour are refused before anything starts.
    defaults = compose_config(group_selections(overrides), config_name="federated_run")
    run = federated_settings(cfg, defaults)
    # A dataset without item text: the parts that read it fall back to ids, or the run is refused, now.
    raw = load_dataset(
        run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore
    )
    fallback = text_fallback(run, overrides, bool(raw.item_text), run.data.name)
    if fallback:
        overrides = [*overrides, *fallback]
        pinned = [*overrides, f"run_name={run.run_name}"]
        run = federated_settings(compose_config(pinned, config_name="federated_run"), defaults)
    # Every component's cross-setting rules, before Flower starts (the ServerApp checks them again).
    check_components(run)
    try:
        summary = launch(run, overrides, out)
    except FlowerRunFailed as error:
        # The Flower log above holds the cause; the command ends on one line saying what failed.
        sys.stderr.write(f"error: {error}\n")
        sys.exit(1)
    reason = untrained_reason(out)
    if reason:
        # The final table would only show the starting model: the run failed, whatever Flower's status says.
        sys.stderr.write(f"error: {reason} (metrics in {out / 'metrics.json'})\n")
        sys.exit(1)
    emit_result(summary)


if __name__ == "__main__":
    main()
