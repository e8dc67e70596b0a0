"""LSC4Rec in the ClientApp: a node's devices fetch the cloud's lists, rerank, request within the budget."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from flwr.app import Context

from lsc4rec.client.collab.candidate_client import CandidateServiceClient
from lsc4rec.client.collab.content import unit_vectors
from lsc4rec.client.collab.fallback import FallbackCloud, empty_lists
from lsc4rec.client.collab.list_training import rerank_rows, train_on_cloud_lists
from lsc4rec.client.collab.request_model import LearnedRequestModel
from lsc4rec.client.collab.serving import ALONE, CollaborationSettings, serve_devices, serve_devices_in_modes
from lsc4rec.client.collab.streaming import serve_arrivals
from lsc4rec.client.local_training import derive_seed
from lsc4rec.client.node_component import NodeComponent, NodeStep
from lsc4rec.client.private_training import CloudListPass
from lsc4rec.client.shard import DeviceShard
from lsc4rec.messages import CONFIG, CandidateService
from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.settings import FederatedRunSettings
from lsc4rec.training import TrainSettings

__all__ = [
    "CollaborationOnNode",
    "candidate_root_certificates",
    "collaborate",
    "collaborate_at_test",
    "collaboration_settings",
    "serve_round",
    "train_on_lists_of",
]


def collaboration_settings(
    run: FederatedRunSettings, alpha: float | None = None, item_vectors: torch.Tensor | None = None
) -> CollaborationSettings:
    """The devices' fusion and request settings (``collab.*`` and ``request.*``).

    ``alpha``: the fusion weight the server sent (``fusion-alpha``); else ``collab.alpha``, which must then be
    a number (``auto`` is the server's choice on the devices' arrivals, so it comes with every message).
    ``item_vectors``: the catalogue's text vectors the node holds (the content term's input).
    """
    collab, request = run.collab, run.request
    weight = alpha if alpha is not None else collab.alpha
    if isinstance(weight, str):
        raise ValueError(f"collab.alpha={weight!r}: the server sends no fusion-alpha; devices need a number")
    return CollaborationSettings(
        candidates=collab.candidates,
        alpha=float(weight),
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
        content_weight=float(collab.content_weight),
        content_items=collab.content_items,
        content_decay=collab.content_decay,
        unit_text=unit_vectors(item_vectors) if item_vectors is not None else None,
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
    alpha: float | None = None,
    item_vectors: torch.Tensor | None = None,
) -> dict[str, float]:
    """LSC4Rec on this node's devices: fetch the cloud's lists, rerank, request within the budget, rank.

    Returns the client-side collaborative metrics, plus per-device request rate and bytes (rates, so that the
    strategy's device-weighted mean is the global rate).
    """
    settings = collaboration_settings(run, alpha, item_vectors)
    with _cloud(run, service, root_certificates) as cloud:
        stale, without_list = _stale_lists(cloud, shard, settings.candidates)
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
    out = {f"client-{k}": v for k, v in result.items() if k.startswith("collab")}
    out.update(_rates(result, shard.num_devices, ""))
    out["list-bytes-per-device"] = _list_bytes_per_device(stale, shard.num_devices)
    out["mean-inconsistency"] = result["mean-inconsistency"]
    out.update(_outage_rates(cloud, without_list, shard.num_devices))
    return out


@contextmanager
def _cloud(
    run: FederatedRunSettings, service: CandidateService, trust: Path | None
) -> Iterator[FallbackCloud]:
    """The candidate service as this node's devices use it: calls that fail while it is unreachable are
    counted and answered by the devices themselves (:class:`FallbackCloud`)."""
    with CandidateServiceClient(
        service.target, token=service.token, root_certificates=trust, timeout=run.collab.service_timeout
    ) as client:
        yield FallbackCloud(client)


def _stale_lists(cloud: FallbackCloud, shard: DeviceShard, n: int) -> tuple[CandidateList, float]:
    """The cloud's lists from its stale copy of each device's history, or empty lists (each device ranks
    with its own model) when the cloud does not answer; also how many devices got none."""
    stale = cloud.recommend_for_users(list(shard.users), n)
    if stale is None:
        return empty_lists(len(shard.users), n), float(len(shard.users))
    return stale, 0.0


def _outage_rates(cloud: FallbackCloud, without_list: float, devices: int) -> dict[str, float]:
    """The round's unanswered cloud calls and devices that got no list from the cloud, per device."""
    devices = max(devices, 1)
    return {
        "cloud-unanswered-calls-per-device": cloud.calls.unanswered / devices,
        "devices-without-cloud-list-rate": without_list / devices,
    }


def _list_bytes_per_device(stale: CandidateList, devices: int) -> float:
    """Bytes of the cloud's lists per device: a user id (int64) and, per item, its id (int64) and score
    (float32)."""
    return (8 * len(stale) + stale.items.size * 12) / max(devices, 1)


def _rates(result: dict[str, float], devices: int, prefix: str) -> dict[str, float]:
    """Request counts and bytes as per-device rates (so the device-weighted mean is the global rate)."""
    devices = max(devices, 1)
    return {
        f"{prefix}request-rate": result["requests"] / devices,
        f"{prefix}request-bytes-per-device": result["request-bytes"] / devices,
    }


def serve_round(
    model: SequentialRecommender,
    shard: DeviceShard,
    run: FederatedRunSettings,
    server_round: int,
    service: CandidateService | None = None,
    root_certificates: Path | None = None,
    alpha: float | None = None,
    item_vectors: torch.Tensor | None = None,
) -> dict[str, float]:
    """The node's devices serve the interactions arriving during ``server_round`` (time moving).

    Each device starts from what it holds when the round starts; with the cloud, from the list the cloud made
    from its stale copy then (the service's view of the round), requesting within the budget as items arrive.
    Returns the serving metrics with per-arrival rates (``request-rate`` = requests per arrival); with
    ``collab.alpha=auto`` also the fused lists' NDCG@10 at every weight of ``collab.alpha_grid``.
    """
    replay = run.federated.replay
    histories = replay.known_sequences(shard.train_sequences, server_round)
    arrivals = [
        list(seq[len(held) : replay.known(len(seq), server_round + 1)])
        for seq, held in zip(shard.train_sequences, histories, strict=True)
    ]
    ks, max_len, exclude = run.eval.ks, run.data.max_len, run.eval.exclude_history
    if service is None or not run.collab.enabled:
        return _per_device(
            serve_arrivals(model, histories, arrivals, max_len, ks, exclude), shard.num_devices
        )
    settings = collaboration_settings(run, alpha, item_vectors)
    grid = run.collab.alpha_grid if run.collab.alpha == "auto" else ()
    with _cloud(run, service, root_certificates) as cloud:
        stale, without_list = _stale_lists(cloud, shard, settings.candidates)
        result = serve_arrivals(
            model,
            histories,
            arrivals,
            max_len,
            ks,
            exclude,
            cloud=cloud,
            stale=stale,
            settings=settings,
            generator=torch.Generator().manual_seed(
                derive_seed(run.seed, "replay", server_round, shard.partition_id)
            ),
            alpha_grid=grid,
        )
    arrived = max(result["replay-arrivals"], 1.0)
    result["request-rate"] = result["replay-requests"] / arrived
    result["request-bytes-per-device"] = result["replay-request-bytes"] / max(shard.num_devices, 1)
    result["list-bytes-per-device"] = _list_bytes_per_device(stale, shard.num_devices)
    result.update(_outage_rates(cloud, without_list, shard.num_devices))
    return _per_device(result, shard.num_devices)


def _per_device(result: dict[str, float], devices: int) -> dict[str, float]:
    """Counts of the round's serving as per-device means (the strategy averages nodes by devices)."""
    for key in ("replay-arrivals", "streaming-updates"):
        result[f"{key}-per-device"] = result.pop(key) / max(devices, 1)
    return result


def collaborate_at_test(
    model: SequentialRecommender,
    shard: DeviceShard,
    run: FederatedRunSettings,
    service: CandidateService,
    root_certificates: Path | None = None,
    alpha: float | None = None,
    item_vectors: torch.Tensor | None = None,
    rank_alone: bool = False,
) -> dict[str, float]:
    """The final table's device-side rows on the test item: the cloud's stale list alone, and the fused
    ranking with no requests, within the request budget and with every device requesting; with
    ``rank_alone`` also the device alone (``test-device-``: full ranking of the same catalogue scores).

    The service holds the cloud's stale copy of each history at the test moment; the device holds its
    training part and validation item.
    """
    settings = collaboration_settings(run, alpha, item_vectors)
    histories, targets = shard.test_histories, shard.test_targets
    out: dict[str, float] = {}
    seed = derive_seed(run.seed, "test-requests", shard.partition_id)
    with _cloud(run, service, root_certificates) as cloud:
        stale, without_list = _stale_lists(cloud, shard, settings.candidates)
        # Both request modes from one pass: the SRM's scores and the fresh lists are computed once.
        served = serve_devices_in_modes(
            model,
            histories,
            targets,
            stale,
            cloud,
            settings,
            {mode: torch.Generator().manual_seed(seed) for mode in ("intelligent", "always")},
            run.data.max_len,
            run.eval.ks,
            rank_alone=rank_alone,
        )
        for mode, result in served.items():
            label = "budget" if mode == "intelligent" else "all"
            out.update(
                {
                    f"test-collab-{label}-{k[len('collab-') :]}": v
                    for k, v in result.items()
                    if k.startswith("collab-") and not k.startswith("collab-before")
                }
            )
            out.update(_rates(result, shard.num_devices, f"test-{label}-"))
            if mode == "always":
                out.update(
                    {
                        f"test-collab-none-{k[len('collab-before-request-') :]}": v
                        for k, v in result.items()
                        if k.startswith("collab-before-request-")
                    }
                )
                out.update({f"test-{k}": v for k, v in result.items() if k.startswith("cloud-")})
                out.update(
                    {f"test-device-{k[len(ALONE) :]}": v for k, v in result.items() if k.startswith(ALONE)}
                )
    out.update({f"test-{k}": v for k, v in _outage_rates(cloud, without_list, shard.num_devices).items()})
    return out


def train_on_lists_of(
    model: SequentialRecommender,
    shard: DeviceShard,
    run: FederatedRunSettings,
    service: CandidateService,
    root_certificates: Path | None,
    server_round: int,
    settings: TrainSettings,
) -> dict[str, float]:
    """Collaborative training on this node: fetch the cloud's lists for every prefix of each device's
    history as the cloud holds it, and train ``collab.srm_epochs`` passes of the candidate-rerank loss.

    Returns the rerank loss, positions, seconds and the bytes the lists took (ids as int64, per device).
    """
    collab = run.collab
    users, k = list(shard.users), collab.hard_negatives
    scores = None
    with _cloud(run, service, root_certificates) as cloud:
        if collab.distill_weight > 0:
            # List distillation: the lists come with the cloud's scores, the soft targets.
            answered = cloud.position_candidate_scores_for_users(users, k)
            tables = None if answered is None else [items for items, _ in answered]
            if answered is not None:
                scores = [table for _, table in answered]
                if any(table is None for table in scores):
                    raise ValueError(
                        "collab.distill_weight > 0 needs the cloud's scores of its lists, and the candidate "
                        "service's model gives none; set collab.distill_weight=0"
                    )
        else:
            tables = cloud.position_candidates_for_users(users, k)
    if tables is None:
        # The cloud is unreachable: the node trains on its own data only this round, and says so.
        return {"rerank-skipped": 1.0, "rerank-seconds": 0.0, "rerank-list-bytes-per-device": 0.0}
    metrics: dict[str, float] = {}
    seconds = 0.0
    for epoch in range(collab.srm_epochs):
        metrics = train_on_cloud_lists(
            model,
            shard.train_sequences,
            tables,
            settings,
            run.data.max_len,
            collab.random_negatives,
            seed=derive_seed(run.seed, "rerank", server_round, shard.partition_id, epoch),
            scores=scores,  # type: ignore[arg-type]  # checked above: no None table when distilling
            distill_weight=collab.distill_weight,
            temperature=collab.distill_temperature,
        )
        seconds += metrics["rerank-seconds"]
    metrics["rerank-skipped"] = 0.0
    metrics["rerank-seconds"] = seconds
    # Ids as int64 and, when distilling, their float32 scores.
    per_item = 8 + (4 if scores is not None else 0)
    list_bytes = sum(per_item * t.size for t in tables)
    metrics["rerank-list-bytes-per-device"] = list_bytes / max(shard.num_devices, 1)
    return metrics


#: ``NodeStep.scratch`` key of the cloud's lists a node trains on under local DP (the privacy component runs
#: the pass, so that its steps are clipped, noised and in the ledger).
CLOUD_LIST_PASS = "cloud-list-pass"


def cloud_list_pass_of(
    shard: DeviceShard,
    run: FederatedRunSettings,
    service: CandidateService,
    root_certificates: Path | None,
) -> tuple[CloudListPass | None, dict[str, float]]:
    """Fetch the cloud's lists for this node's devices, as rows for the DP-SGD pass over them (local DP);
    None when the cloud is unreachable (the node then trains on its own data only, and says so)."""
    with _cloud(run, service, root_certificates) as cloud:
        tables = cloud.position_candidates_for_users(list(shard.users), run.collab.hard_negatives)
    if tables is None:
        return None, {"rerank-skipped": 1.0, "rerank-list-bytes-per-device": 0.0}
    inputs, targets, hard = rerank_rows(shard.train_sequences, tables, run.data.max_len)
    lists = CloudListPass(inputs, targets, hard, run.collab.random_negatives, run.collab.srm_epochs)
    list_bytes = sum(8 * t.size for t in tables)
    return lists, {
        "rerank-skipped": 0.0,
        "rerank-list-bytes-per-device": list_bytes / max(shard.num_devices, 1),
    }


class CollaborationOnNode(NodeComponent):
    """The cloud collaboration's training on a node (LSC4Rec): with ``collab.srm_training=collaborative``,
    the devices first learn to rerank the cloud's lists, then adapt as usual. (Their serving side, fusing and
    requesting, runs in the evaluation handler: :func:`serve_round`, :func:`collaborate`.)"""

    name = "collaboration"

    def active(self, run: FederatedRunSettings) -> bool:
        """With the cloud on (``collab.enabled``)."""
        return run.collab.enabled

    def before_update(self, step: NodeStep, settings: TrainSettings) -> dict[str, float]:
        """The pass over the cloud's lists, when the server announced its candidate service."""
        run = step.run
        service = CandidateService.from_config(step.msg.content[CONFIG])
        if run.collab.srm_training != "collaborative" or service is None:
            return {}
        trust = candidate_root_certificates(step.context, run) if service.tls else None
        if run.privacy.mode == "local":
            # Under local DP the pass is part of the DP-SGD round (lsc4rec.client.privacy_on_node).
            lists, metrics = cloud_list_pass_of(step.shard, run, service, trust)
            step.scratch[CLOUD_LIST_PASS] = lists
            return metrics
        server_round = int(step.server_round or 1)
        return train_on_lists_of(step.model, step.shard, run, service, trust, server_round, settings)
