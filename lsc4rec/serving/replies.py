"""The candidate service's reply messages, built from what the model returned and the service's limits.

A :class:`~lsc4rec.models.llm.candidates.CandidateList` becomes ``RecommendReply`` / ``RecommendBatchReply``
rows, per-position candidates a ``PositionCandidatesForUsersReply``, the limits a ``ServiceInfo``. Every
candidate reply echoes the request's ``request_id`` and names the model version. The ``Metrics`` reply has
its home beside the counters it carries (:func:`lsc4rec.proto.service_metrics.to_reply`), since clients read
it back from there.
"""

from __future__ import annotations

from collections.abc import Sequence

from lsc4rec.models.llm.candidates import CandidateList
from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.serving.admission import ServiceLimits
from lsc4rec.serving.model_runner import PositionRows

__all__ = [
    "batch_reply",
    "info_reply",
    "position_reply",
    "recommend_reply",
]


def info_reply(limits: ServiceLimits) -> pb.ServiceInfo:
    """The catalogue size and request limits a service enforces."""
    return pb.ServiceInfo(
        num_items=limits.num_items,
        max_history=limits.max_history,
        max_n=limits.max_n,
        model_version=limits.model_version,
        max_batch=limits.max_batch,
        max_position_ids=limits.max_position_ids,
    )


def recommend_reply(
    result: CandidateList, row: int, request_id: str, limits: ServiceLimits
) -> pb.RecommendReply:
    """Row ``row`` of ``result`` as a reply message."""
    return pb.RecommendReply(
        items=result.items[row].tolist(),
        scores=result.scores[row].tolist(),
        num_items=limits.num_items,
        model_version=limits.model_version,
        request_id=request_id,
    )


def batch_reply(result: CandidateList, request_id: str, limits: ServiceLimits) -> pb.RecommendBatchReply:
    """Every row of ``result`` as one batch reply, in request order."""
    return pb.RecommendBatchReply(
        replies=[recommend_reply(result, row, request_id, limits) for row in range(len(result))],
        request_id=request_id,
    )


def position_reply(
    user_ids: Sequence[int],
    candidates: Sequence[PositionRows],
    k: int,
    request_id: str,
    limits: ServiceLimits,
) -> pb.PositionCandidatesForUsersReply:
    """Each user's per-position candidates (and scores, when computed), flattened row by row, in order."""
    return pb.PositionCandidatesForUsersReply(
        users=[
            pb.UserPositionCandidates(
                user_id=user,
                positions=int(rows.shape[0]),
                items=rows.reshape(-1).tolist(),
                scores=[] if scores is None else scores.reshape(-1).tolist(),
            )
            for user, (rows, scores) in zip(user_ids, candidates, strict=True)
        ],
        k=k,
        model_version=limits.model_version,
        request_id=request_id,
    )
