"""LSC4Rec in the ClientApp: a node's devices fetch the cloud's lists, rerank, request within the budget."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import Context

from lsc4rec.client.collab.candidate_client import CandidateServiceClient
from lsc4rec.client.collab.request_model import LearnedRequestModel
from lsc4rec.client.collab.serving import CollaborationSettings, serve_devices
from lsc4rec.client.local_training import derive_seed
from lsc4rec.client.shard import DeviceShard
from lsc4rec.messages import CandidateService
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.settings import FederatedRunSettings

__all__ = ["candidate_root_certificates", "collaborate", "collaboration_settings"]


def collaboration_settings(run: FederatedRunSettings) -> CollaborationSettings:
    """The devices' fusion and request settings (``collab.*`` and ``request.*``).

    ``collab.alpha`` is a number here: :func:`lsc4rec.settings.federated_settings` refuses ``auto`` (chosen on
    validation by the request-curve experiment, which a device cannot do) before any round starts.
    """
    collab, request = run.collab, run.request
    if isinstance(collab.alpha, str):
        raise ValueError(f"collab.alpha={collab.alpha!r}: devices in a federated run need a number")
    return CollaborationSettings(
        candidates=collab.candidates,
        alpha=collab.alpha,
        normalization=collab.normalization,
        score=request.score,
        k=request.k,
        mode=request.mode,
        ratio=request.target_ratio,
        exclude_history=run.eval.exclude_history,
        candidate_pool=collab.candidate_pool,
        device_candidates=collab.device_candidates,
        request_model=LearnedRequestModel.load(Path(request.model_path))
        if request.score == "learned" and request.model_path
        else None,
    )


def candidate_root_certificates(context: Context, run: FederatedRunSettings) -> Path:
    """The CA file a device trusts for the candidate service: node config ``candidate-ca``, else
    ``collab.service_root_certificates``; a clear error when neither names a readable file."""
    path = context.node_config.get("candidate-ca") or run.collab.service_root_certificates
    if not path:
        raise ValueError(
            "the candidate service uses TLS: set collab.service_root_certificates or the SuperNode's node "
            "config candidate-ca to the CA certificate (PEM) to trust"
        )
    if not Path(str(path)).is_file():
        raise FileNotFoundError(f"candidate-service CA certificate {path} does not exist on this device")
    return Path(str(path))


def collaborate(
    model: SequentialRecommender,
    shard: DeviceShard,
    run: FederatedRunSettings,
    service: CandidateService,
    root_certificates: Path | None = None,
) -> dict[str, float]:
    """LSC4Rec on this node's devices: fetch the cloud's lists, rerank, request within the budget, rank.

    Returns the client-side collaborative metrics, plus per-device request rate and bytes (rates, so that the
    strategy's device-weighted mean is the global rate).
    """
    settings = collaboration_settings(run)
    client = CandidateServiceClient(
        service.target,
        token=service.token,
        root_certificates=root_certificates,
        timeout=run.collab.service_timeout,
    )
    with client as cloud:
        stale = cloud.recommend_for_users(list(shard.users), settings.candidates)
        stale_bytes = 8 * shard.num_devices + stale.items.size * 12
        result = serve_devices(
            model,
            shard.valid_histories,
            shard.valid_targets,
            stale,
            cloud,
            settings,
            run.data.max_len,
            torch.Generator().manual_seed(derive_seed(run.seed, "requests", shard.partition_id)),
            run.eval.ks,
        )
    devices = max(shard.num_devices, 1)
    out = {f"client-{k}": v for k, v in result.items() if k.startswith("collab")}
    out["request-rate"] = result["requests"] / devices
    out["request-bytes-per-device"] = result["request-bytes"] / devices
    out["list-bytes-per-device"] = stale_bytes / devices
    out["mean-inconsistency"] = result["mean-inconsistency"]
    return out
