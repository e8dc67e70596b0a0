"""LSC4Rec in the ClientApp: a node's devices fetch the cloud's lists, rerank, request within the budget."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import Context
from omegaconf import DictConfig

from lsc4rec.client.collab.candidate_client import CandidateServiceClient
from lsc4rec.client.collab.request_model import LearnedRequestModel
from lsc4rec.client.collab.serving import CollaborationSettings, serve_devices
from lsc4rec.client.local_training import derive_seed
from lsc4rec.client.shard import DeviceShard
from lsc4rec.messages import CandidateService
from lsc4rec.models.srm import SequentialRecommender

__all__ = ["candidate_root_certificates", "collaborate", "settings_from_config"]


def settings_from_config(cfg: DictConfig) -> CollaborationSettings:
    """The devices' fusion and request settings (``collab.*`` and ``request.*``).

    ``collab.alpha`` must be a number here: ``auto`` is chosen on validation by the request-curve experiment,
    which a device cannot do; the federated entry point refuses it before any round starts.
    """
    try:
        alpha = float(cfg.collab.alpha)
    except ValueError:
        raise ValueError(
            f"collab.alpha={cfg.collab.alpha!r}: devices in a federated run need a number "
            "(auto is chosen on validation by lsc4rec.simulations.request_curve)"
        ) from None
    return CollaborationSettings(
        candidates=int(cfg.collab.candidates),
        alpha=alpha,
        normalization=str(cfg.collab.normalization),
        score=str(cfg.request.score),
        k=int(cfg.request.k),
        mode=str(cfg.request.mode),
        ratio=float(cfg.request.target_ratio),
        exclude_history=bool(cfg.eval.exclude_history),
        candidate_pool=str(cfg.collab.candidate_pool),
        device_candidates=int(cfg.collab.device_candidates),
        request_model=LearnedRequestModel.load(Path(cfg.request.model_path))
        if str(cfg.request.score) == "learned" and cfg.request.get("model_path")
        else None,
    )


def candidate_root_certificates(context: Context, cfg: DictConfig) -> Path:
    """The CA file a device trusts for the candidate service: node config ``candidate-ca``, else
    ``collab.service_root_certificates``; a clear error when neither names a readable file."""
    path = context.node_config.get("candidate-ca") or cfg.collab.get("service_root_certificates")
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
    cfg: DictConfig,
    service: CandidateService,
    root_certificates: Path | None = None,
) -> dict[str, float]:
    """LSC4Rec on this node's devices: fetch the cloud's lists, rerank, request within the budget, rank.

    Returns the client-side collaborative metrics, plus per-device request rate and bytes (rates, so that the
    strategy's device-weighted mean is the global rate).
    """
    settings = settings_from_config(cfg)
    client = CandidateServiceClient(
        service.target,
        token=service.token,
        root_certificates=root_certificates,
        timeout=float(cfg.collab.service_timeout),
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
            int(cfg.data.max_len),
            torch.Generator().manual_seed(derive_seed(cfg.seed, "requests", shard.partition_id)),
            tuple(int(k) for k in cfg.eval.ks),
        )
    devices = max(shard.num_devices, 1)
    out = {f"client-{k}": v for k, v in result.items() if k.startswith("collab")}
    out["request-rate"] = result["requests"] / devices
    out["request-bytes-per-device"] = result["request-bytes"] / devices
    out["list-bytes-per-device"] = stale_bytes / devices
    out["mean-inconsistency"] = result["mean-inconsistency"]
    return out
