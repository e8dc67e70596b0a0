"""The message format between the ServerApp and the ClientApp: every record key, metric key and codec.

Both sides import this module and nothing of the other side, so a device node never loads server code.

Train message (server -> node), ``RecordDict``:
  ``arrays``   ArrayRecord   the global SRM (state dict)
  ``config``   ConfigRecord  ``server-round``, ``proximal-mu``; with SOLID ``codebook-version``; with central
                             DP and client-side clipping Flower's clipping-norm key
  ``codebook`` ArrayRecord   (SOLID, only to nodes without the current version) :func:`codebook_record`
  ``item-text`` ArrayRecord  (``model.item_text``: the catalogue's text vectors, only to nodes without the
                             announced ``item-text-version``) :func:`item_text_record`, or in the compact
                             form (``federated.item_text_codes``) :func:`compact_item_text_record`
Train reply (node -> server):
  ``arrays``   ArrayRecord   the locally trained SRM
  ``metrics``  MetricRecord  ``num-examples`` (aggregation weight), ``train_loss``, ...; local DP
                             adds ``epsilon``, ``devices`` and ``privacy-exhausted``; SOLID adds
                             ``codebook-version``; with item text ``item-text-version``
  ``row-counts``      ArrayRecord  (``strategy.row_weighting``) per-item interaction counts of the node
  ``codebook-stats``  ArrayRecord  (SOLID) :func:`statistics_record`
Evaluate message: ``arrays`` and ``config`` (``server-round``; with the cloud :class:`CandidateService` keys
and ``fusion-alpha``, the weight devices fuse with; SOLID as above; ``phase``: ``round`` after a round's
training, ``test`` once after the last round with the last round's SRM). Evaluate reply: ``metrics``
(``num-examples`` and ``client-*`` metrics; with time moving the round's ``replay-*`` serving metrics; in the
test phase the ``test-*`` rows of the final table).

The fresh-popularity prior (``privacy.fresh_prior``, :mod:`lsc4rec.models.fresh_popularity`): the last round's
train replies carry ``fresh-prior`` (ArrayRecord ``valid`` / ``test``: the node's fresh counts, noised under
local DP) and the metric ``fresh-prior-released``; the last round's evaluate messages carry the summed
``valid`` counts and their replies ``fresh-prior-gain-<w>`` (each weight's summed validation NDCG@10); the
test messages carry the summed ``test`` counts and the config key ``fresh-prior-weight``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from lsc4rec.codebook import CodebookStatistics, SemanticCodebook
from lsc4rec.text.compact import CompactItemVectors

__all__ = [
    "ADAPTIVE_CLIPPING",
    "ARRAYS",
    "CODEBOOK",
    "CODEBOOK_STATS",
    "CODEBOOK_VERSION",
    "CONFIG",
    "DEVICES",
    "EPSILON",
    "FRESH_PRIOR",
    "FRESH_PRIOR_RELEASED",
    "FRESH_PRIOR_TEST",
    "FRESH_PRIOR_VALID",
    "FRESH_PRIOR_WEIGHT",
    "FUSION_ALPHA",
    "ITEM_TEXT",
    "ITEM_TEXT_VERSION",
    "METRICS",
    "NUM_EXAMPLES",
    "PHASE",
    "PHASE_ROUND",
    "PHASE_TEST",
    "PRIVACY_EXHAUSTED",
    "PROXIMAL_MU",
    "ROW_COUNTS",
    "SERVER_ROUND",
    "TRAIN_LOSS",
    "CandidateService",
    "alpha_metric",
    "codebook_from_record",
    "codebook_record",
    "compact_item_text_record",
    "fresh_prior_gain_metric",
    "instruction_destinations",
    "item_text_from_record",
    "item_text_record",
    "item_text_version",
    "replying_node",
    "statistics_from_record",
    "statistics_record",
]

# Records of a message's content.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
ROW_COUNTS = "row-counts"
CODEBOOK = "codebook"
CODEBOOK_STATS = "codebook-stats"
ITEM_TEXT = "item-text"

# Config keys (server -> node).
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
# Central DP with client-side adaptive clipping: the node clips adaptively and reports whether it clipped.
ADAPTIVE_CLIPPING = "central-dp-adaptive"
CODEBOOK_VERSION = "codebook-version"
ITEM_TEXT_VERSION = "item-text-version"
PHASE = "phase"
# The fusion weight devices use (collab.alpha=auto: chosen by the server on the devices' arrivals).
FUSION_ALPHA = "fusion-alpha"
# The fresh prior's weight the test's rankings use (chosen by the server on the devices' released gains).
FRESH_PRIOR_WEIGHT = "fresh-prior-weight"
# Values of PHASE: the per-round client evaluation and the final test on the devices.
PHASE_ROUND = "round"
PHASE_TEST = "test"

# The fresh prior's counts (node -> server in the last round's train replies, server -> node after it).
FRESH_PRIOR = "fresh-prior"
FRESH_PRIOR_VALID = "valid"
FRESH_PRIOR_TEST = "test"

# Metric keys (node -> server).
FRESH_PRIOR_RELEASED = "fresh-prior-released"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train_loss"
PRIVACY_EXHAUSTED = "privacy-exhausted"
EPSILON = "epsilon"
DEVICES = "devices"


def fresh_prior_gain_metric(weight: float) -> str:
    """The metric key of a node's summed validation NDCG@10 with the fresh prior at ``weight`` (node ->
    server, the last round's evaluation)."""
    return f"fresh-prior-gain-{weight:g}"


def alpha_metric(alpha: float) -> str:
    """The metric key of the fused lists' NDCG@10 over a round's arrivals at fusion weight ``alpha`` (node ->
    server; the server chooses ``collab.alpha=auto`` from them)."""
    return f"replay-alpha-{alpha:g}-NDCG@10"


@dataclass(frozen=True)
class CandidateService:
    """Where a node's devices reach the cloud's candidate service (evaluate config, server -> node)."""

    target: str
    token: str
    tls: bool

    ADDRESS_KEY = "candidate-service"
    TOKEN_KEY = "candidate-token"
    TLS_KEY = "candidate-tls"

    def to_config(self) -> dict[str, str | bool]:
        """The config entries announcing the service."""
        return {self.ADDRESS_KEY: self.target, self.TOKEN_KEY: self.token, self.TLS_KEY: self.tls}

    @classmethod
    def from_config(cls, config: ConfigRecord) -> CandidateService | None:
        """The service announced in ``config``; None when the server runs no cloud."""
        if cls.ADDRESS_KEY not in config:
            return None
        tls = bool(config.get(cls.TLS_KEY, False))
        return cls(str(config[cls.ADDRESS_KEY]), str(config[cls.TOKEN_KEY]), tls)


def item_text_version(vectors: torch.Tensor) -> int:
    """The catalogue's text version: 48 bits of a digest of the vectors as they travel (float16, with their
    shape), an integer so a node can acknowledge it in a ``MetricRecord``."""
    data = vectors.detach().to(torch.float16).contiguous().numpy().tobytes()
    digest = hashlib.sha256(repr(tuple(vectors.shape)).encode() + data).hexdigest()
    return int(digest[:12], 16)


def item_text_record(vectors: torch.Tensor) -> ArrayRecord:
    """The catalogue's text vectors ``[num_items + 1, D]`` as an ``ArrayRecord`` in float16 (half the bytes;
    the text part's projection learns on the rounded vectors everywhere, server included)."""
    return ArrayRecord({"vectors": Array(vectors.detach().to(torch.float16).contiguous().numpy())})


def compact_item_text_record(compact: CompactItemVectors) -> ArrayRecord:
    """The catalogue's text vectors in the compact form: float16 centroids per level (``centroids_<l>``),
    every item's semantic id (``codes``, the narrowest unsigned type) and a bitmap of the items with text
    (``present``)."""
    dtype = np.uint8 if max(compact.codebook.sizes) <= 256 else np.uint16
    arrays = {
        f"centroids_{level}": Array(c.to(torch.float16).numpy())
        for level, c in enumerate(compact.codebook.centroids)
    }
    arrays["codes"] = Array(compact.codes.numpy().astype(dtype))
    arrays["present"] = Array(np.packbits(compact.present.numpy()))
    return ArrayRecord(arrays)


def _rebuilt_item_text(record: ArrayRecord) -> torch.Tensor:
    """The vectors a compact record stands for (the sum of each item's codes' centroids), float32."""
    levels = sorted(key for key in record if key.startswith("centroids_"))
    if not levels or "present" not in record:
        raise ValueError(
            f"the compact item-text record lacks centroids or 'present' (it holds {sorted(record)})"
        )
    codes = torch.from_numpy(np.asarray(record["codes"].numpy(), dtype=np.int64))
    centroids = [
        torch.from_numpy(np.asarray(record[f"centroids_{level}"].numpy(), dtype=np.float32))
        for level in range(len(levels))
    ]
    if codes.ndim != 2 or codes.shape[1] != len(centroids):
        raise ValueError(
            f"the compact item-text record has codes {tuple(codes.shape)} for {len(centroids)} levels"
        )
    for level, table in enumerate(centroids):
        if int(codes[:, level].max()) >= table.shape[0]:
            raise ValueError(
                f"the compact item-text record has a code beyond level {level}'s {table.shape[0]}"
            )
    present = np.unpackbits(np.asarray(record["present"].numpy(), dtype=np.uint8))[: codes.shape[0]]
    vectors = sum(table[codes[:, level]] for level, table in enumerate(centroids))
    return vectors * torch.from_numpy(present.astype(np.float32)).unsqueeze(1)


def item_text_from_record(record: ArrayRecord, num_items: int) -> torch.Tensor:
    """Inverse of :func:`item_text_record` and :func:`compact_item_text_record` (float32); a clear error for
    a record of another catalogue."""
    if "codes" in record:
        vectors = _rebuilt_item_text(record)
    elif "vectors" not in record:
        raise ValueError(f"the item-text record lacks 'vectors' (it holds {sorted(record)})")
    else:
        vectors = torch.from_numpy(np.asarray(record["vectors"].numpy(), dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[0] != num_items + 1:
        raise ValueError(
            f"the item-text record holds vectors of shape {tuple(vectors.shape)}; this node's catalogue "
            f"needs [{num_items + 1}, D]"
        )
    return vectors


def codebook_record(codebook: SemanticCodebook) -> ArrayRecord:
    """The codebook as an ``ArrayRecord`` (``level_<l>`` centroids and ``version``)."""
    return ArrayRecord({k: Array(v.numpy()) for k, v in codebook.to_arrays().items()})


def codebook_from_record(record: ArrayRecord) -> SemanticCodebook:
    """Inverse of :func:`codebook_record`; a clear error for a malformed record."""
    return SemanticCodebook.from_arrays({k: torch.from_numpy(record[k].numpy()) for k in record})


def statistics_record(stats: CodebookStatistics) -> ArrayRecord:
    """Statistics as an ``ArrayRecord``: ``counts_<l>``, ``sums_<l>``, ``squares_<l>`` (float64)."""
    arrays = {}
    for level, (counts, sums, squares) in enumerate(
        zip(stats.counts, stats.sums, stats.squares, strict=True)
    ):
        arrays[f"counts_{level}"] = Array(counts.numpy())
        arrays[f"sums_{level}"] = Array(sums.numpy())
        arrays[f"squares_{level}"] = Array(squares.numpy())
    return ArrayRecord(arrays)


def statistics_from_record(record: ArrayRecord, codebook: SemanticCodebook) -> CodebookStatistics:
    """Parse statistics and check them against ``codebook``'s shapes (ValueError naming the array)."""
    stats = CodebookStatistics.zeros_like(codebook)
    for level, centroids in enumerate(codebook.centroids):
        k, dim = centroids.shape
        expected = {f"counts_{level}": (k,), f"sums_{level}": (k, dim), f"squares_{level}": (k,)}
        for name, shape in expected.items():
            if name not in record:
                raise ValueError(f"codebook statistics lack {name!r}")
            value = record[name].numpy()
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"codebook statistics {name!r} has shape {tuple(value.shape)}, expected {shape}"
                )
            if not np.isfinite(value).all():
                raise ValueError(f"codebook statistics {name!r} hold NaN or infinite values")
        counts = torch.from_numpy(record[f"counts_{level}"].numpy()).to(torch.float64)
        if bool((counts < 0).any()):
            raise ValueError(f"codebook statistics 'counts_{level}' hold negative counts")
        stats.counts[level] = counts
        stats.sums[level] = torch.from_numpy(record[f"sums_{level}"].numpy()).to(torch.float64)
        stats.squares[level] = torch.from_numpy(record[f"squares_{level}"].numpy()).to(torch.float64)
    return stats


def instruction_destinations(sent: Sequence[Message]) -> dict[str, int]:
    """Message id -> destination node of instructions ``sent`` (the grid sets the ids when it sends)."""
    return {m.metadata.message_id: int(m.metadata.dst_node_id) for m in sent if m.metadata.message_id}


def replying_node(reply: Message, destinations: Mapping[str, int]) -> int:
    """The node ``reply`` answers for: the destination of the instruction it replies to
    (:func:`instruction_destinations`), else its sender. An error reply the SuperLink makes for a node that
    stopped sending heartbeats names the SuperLink as its sender, not the node."""
    node = destinations.get(reply.metadata.reply_to_message_id)
    return node if node is not None else int(reply.metadata.src_node_id)
