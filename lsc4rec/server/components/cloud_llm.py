"""The cloud side of LSC4Rec inside the ServerApp: the cloud LLM and the candidate service it answers through.

The ServerApp trains the LLM on the cloud's stale view of the users (or loads ``llm.path``), then serves it
over gRPC for the run's lifetime. The service holds the cloud's copy of each user's history at the moment
the devices are evaluated (their validation moment, ``collab.cloud_lag`` interactions late), so a device
gets its stale list by user id and uploads its real-time history only when it requests a fresh one.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lsc4rec.data import LeaveOneOutSplit, load_dataset
from lsc4rec.data.replay import Replay
from lsc4rec.data.staleness import cloud_view_for, keep_held
from lsc4rec.models.llm.candidates import CandidateSource
from lsc4rec.models.llm.llm_training import fit_llm
from lsc4rec.models.llm.onnx_serving import OnnxCandidateSource, onnx_serving_problem
from lsc4rec.models.llm.pretrained import build_llm
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.solid.pipeline import llm_semantic_ids
from lsc4rec.serving import RunningService, TLSConfig, serve
from lsc4rec.settings import CollabSettings, FederatedRunSettings, SettingsError
from lsc4rec.torch_device import resolve_device

logger = logging.getLogger(__name__)

__all__ = ["Cloud", "serving_source", "start_cloud"]


@dataclass
class Cloud:
    """The running cloud: its LLM, the candidate service and the token devices present to it."""

    llm: CloudLLM
    service: RunningService
    token: str
    report: dict
    #: Where devices call the service (``collab.service_public_address`` or the bound address).
    public_address: str = ""
    split: LeaveOneOutSplit | None = None
    replay: Replay | None = None
    lag: int = 0
    #: Which evaluated users the cloud holds at all (``collab.cloud_users``); None = every user.
    held: np.ndarray | None = None
    #: The cloud's stale copy of each history at the test moment (the final table's lists).
    test_prompts: list[list[int]] | None = None

    def move_to_round(self, server_round: int) -> None:
        """With time moving: the service answers from the cloud's copy at the start of ``server_round``."""
        if self.replay is not None and self.replay.enabled and self.split is not None:
            self.service.update_user_histories(
                _round_view(self.split, self.replay, self.lag, self.held, server_round)
            )

    def move_to_test(self) -> None:
        """The service answers from the cloud's stale copy of each history at the test moment."""
        if self.test_prompts is not None:
            self.service.update_user_histories(self.test_prompts)

    def stop(self) -> None:
        """Stop the candidate service."""
        self.service.stop(grace=1.0)


def _semantic_tokens(run: FederatedRunSettings, split: LeaveOneOutSplit) -> dict:
    """SOLID semantic ids for the LLM's item tokens when ``llm.item_tokens=semantic`` (else nothing)."""
    if not run.llm.semantic_items:
        return {}
    raw = load_dataset(
        run.data.name, run.data.path, run.data.format, run.data.text_path, kcore=run.data.kcore
    )
    ids, sizes = llm_semantic_ids(run.solid, raw, split, seed=run.seed)
    return {"semantic_ids": ids, "semantic_sizes": sizes}


def start_cloud(run: FederatedRunSettings, split: LeaveOneOutSplit, out: Path) -> Cloud:
    """Train (or load) the cloud LLM on the stale view of ``split`` and start its candidate service."""
    llm_settings = run.llm
    replay = run.federated.replay
    view = cloud_view_for(split, run.collab, run.seed, replay)
    saved = out / "llm"
    resuming = run.federated.resume and saved.is_dir() and not llm_settings.path
    # A resumed run serves the LLM it trained before the interruption instead of training another one.
    llm = (
        CloudLLM.from_pretrained(saved)
        if resuming
        else build_llm(
            llm_settings,
            split.num_items,
            seed=run.seed,
            item_text=split.item_text,
            text_cfg=run.text,
            **_semantic_tokens(run, split),
        )
    )
    report: dict = {"cloud_lag": view.lag, "llm_reloaded": resuming, "item_init": llm.item_init}
    if not llm_settings.path and not resuming:
        settings = llm_settings.train
        logger.info("cloud LLM: training for up to %d epochs on its stale copy of the users", settings.epochs)
        result = fit_llm(llm, view.train, view.valid_histories, view.valid_targets, settings, seed=run.seed)
        llm.save_pretrained(saved)
        report.update(best_epoch=result.best_epoch, train_seconds=round(result.train_seconds, 1))
        report["cloud_valid"] = result.best_valid
    # The cloud serves where it trains (a GPU when the server has one).
    llm.to(resolve_device(llm_settings.train.device, "llm.train.device"))
    llm.eval()
    report["device"] = str(llm.device)
    token = secrets.token_urlsafe(24)
    model_version = f"{llm_settings.name}-{run.data.name}"
    source, report["service_runtime"] = serving_source(llm, run.collab.service_runtime, model_version)
    delay = run.collab.service_batch_delay_ms
    service = serve(
        source,
        run.collab.service_address,
        token=token,
        tls=service_tls(run.collab),
        max_n=max(run.collab.candidates, 100),
        model_version=model_version,
        batch_delay=None if delay is None else delay / 1000,
        max_queue=run.collab.service_max_queue,
        user_histories=_round_view(split, replay, run.collab.cloud_lag, view.held, 1)
        if replay.enabled
        else view.stale_valid_prompts,
    )
    public = public_address(run.collab.service_public_address, service.target)
    report["service"] = {"bound": service.target, "public": public, "tls": service.tls}
    logger.info(
        "cloud LLM serving candidates on %s (devices call %s, TLS %s, %s)",
        service.target,
        public,
        service.tls,
        report["service_runtime"],
    )
    return Cloud(
        llm=llm,
        service=service,
        token=token,
        report=report,
        public_address=public,
        split=split,
        replay=replay,
        lag=view.lag,
        held=view.held,
        test_prompts=view.stale_test_prompts,
    )


def serving_source(llm: CloudLLM, runtime: str, model_version: str) -> tuple[CandidateSource, str]:
    """What the candidate service runs for ``collab.service_runtime`` (auto | onnx | torch), and its name.

    ``auto`` picks ONNX Runtime when the LLM can be served that way, else the PyTorch model; ``onnx`` on an
    LLM that cannot is a SettingsError naming the key and the reason.
    """
    problem = onnx_serving_problem(llm)
    if runtime == "torch" or (runtime == "auto" and problem):
        return llm, "torch"
    if problem:
        raise SettingsError(
            f"collab.service_runtime=onnx: the cloud LLM cannot be served through ONNX: {problem}"
        )
    return OnnxCandidateSource(llm, model_version=model_version), "onnx"


def _round_view(
    split: LeaveOneOutSplit, replay: Replay, lag: int, held: np.ndarray | None, server_round: int
) -> list[list[int]]:
    """The cloud's copy of every device's history when ``server_round`` starts (time moving); empty for the
    users it does not hold."""
    seen = replay.cloud_sequences(split.train, server_round, lag)
    return seen if held is None else keep_held(seen, held)


def public_address(configured: str | None, bound: str) -> str:
    """Where devices call the service: ``configured`` (``host`` takes the bound port), else ``bound``."""
    if not configured:
        return bound
    configured = str(configured)
    if configured.rsplit(":", 1)[-1].isdigit() and ":" in configured:
        return configured
    return f"{configured}:{bound.rsplit(':', 1)[-1]}"


def service_tls(collab: CollabSettings) -> TLSConfig | None:
    """The candidate service's TLS files, ``collab.service_certificate`` + ``service_key`` (both or none)."""
    certificate, key = collab.service_certificate, collab.service_key
    if not certificate and not key:
        return None
    if not certificate or not key:
        raise ValueError(
            "collab.service_certificate and collab.service_key go together: got "
            f"certificate={certificate!r}, key={key!r}"
        )
    return TLSConfig(Path(str(certificate)), Path(str(key)))
