"""Phone-side reference client: cloud candidates over TLS + token, reranked on the device with ONNX Runtime.

    python deploy/phone_client.py --service cloud.lan:50051 --ca ca.crt --token-file candidate-token \\
        --model srm-candidates.onnx --history 12,7,33 --n 20 --alpha 0.5

The inference half of LSC4Rec as a phone runs it, written against what a phone can ship: **numpy,
onnxruntime and grpcio only** (plus the generated ``lsc4rec.proto`` stubs, which import nothing but protobuf
and grpc). It never imports torch or any torch-dependent lsc4rec module, so the same steps port line by
line to ONNX Runtime Mobile (Kotlin/Swift) with a gRPC stub generated from
``lsc4rec/proto/candidate_service.proto``:

1. ``Info`` (catalogue size and ``max_history``), then ``Recommend`` for the user's most recent
   ``max_history`` items: the cloud LLM's top-``n`` candidates and their log-probability scores. TLS is
   verified against ``--ca``; the token travels as ``authorization: Bearer <token>`` metadata.
2. The exported SRM candidate graph (``export_srm(..., kind="candidates")``) scores those candidates after
   the on-device history (its most recent ``max_len`` items; the graph left-pads shorter ones itself).
3. The final order is the SRM's (``--alpha 0``, the default) or, with ``--alpha A``, the LSC4Rec fusion
   ``A * norm(LLM) + (1 - A) * norm(SRM)`` of :mod:`lsc4rec.client.collab.fusion` (same normalisations,
   same tie
   rule: a stable sort keeps the LLM's order among equal scores; empty slots, item 0, rank last).

Prints ``RESULT {json}`` with the candidates, both score lists, the SRM order and the final order, the
service's model version, timings, and ``torch_imported`` (false unless something pulled torch in). Exit
status 2 for bad input or a mismatched model file, 3 when the service refuses or cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from lsc4rec.proto import candidate_service_pb2 as pb
from lsc4rec.proto import candidate_service_pb2_grpc as pb_grpc

#: Normalisations of lsc4rec.client.collab.fusion, re-implemented in numpy (that module needs torch).
NORMALIZATIONS = ("minmax", "zscore", "softmax", "rank")
# Key of the JSON metadata export_srm stores in the ONNX file (lsc4rec.client.onnx_runtime._METADATA_KEY).
_METADATA_KEY = "lsc4rec"


class PhoneClientError(RuntimeError):
    """A problem the user must fix, with the exit status to report it with."""

    def __init__(self, message: str, status: int) -> None:
        """``message`` names the file, field or value at fault; ``status`` is the process exit status."""
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------- fusion (numpy port of fusion.py)
def normalize_scores(scores: np.ndarray, valid: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Row-wise normalisation of ``scores [B, n]`` over the ``valid`` slots (invalid -> 0), as fusion.py."""
    if method not in NORMALIZATIONS:
        raise PhoneClientError(f"--normalization {method!r} is not one of {NORMALIZATIONS}", 2)
    scores = scores.astype(np.float32)
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if method == "minmax":
            low = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
            high = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
            out = (scores - low) / np.maximum(high - low, np.float32(1e-12))
        elif method == "zscore":
            mean = np.where(valid, scores, 0.0).sum(axis=1, keepdims=True) / count
            var = np.where(valid, (scores - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / count
            out = (scores - mean) / np.maximum(np.sqrt(var), np.float32(1e-12))
        elif method == "softmax":
            masked = np.where(valid, scores, -np.inf)
            shifted = np.exp(masked - masked.max(axis=1, keepdims=True))
            out = shifted / shifted.sum(axis=1, keepdims=True)
        else:
            order = np.argsort(-np.where(valid, scores, -np.inf), axis=1, kind="stable")
            position = np.empty_like(order)
            np.put_along_axis(position, order, np.arange(scores.shape[1])[None, :], axis=1)
            out = 1.0 - position.astype(np.float32) / scores.shape[1]
    out = np.nan_to_num(out.astype(np.float32), nan=0.0)
    return np.where(valid, out, np.float32(0.0))


def fuse_scores(
    llm_scores: np.ndarray, srm_scores: np.ndarray, items: np.ndarray, alpha: float, method: str
) -> np.ndarray:
    """``alpha * norm(LLM) + (1 - alpha) * norm(SRM)`` per candidate; empty slots (item 0) get -inf."""
    if not 0.0 <= alpha <= 1.0:
        raise PhoneClientError(f"--alpha must be in [0, 1], got {alpha}", 2)
    valid = items > 0
    fused = alpha * normalize_scores(llm_scores, valid, method) + (1.0 - alpha) * normalize_scores(
        srm_scores, valid, method
    )
    return np.where(valid, fused, -np.inf).astype(np.float32)


def rerank(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``items [B, n]`` sorted by ``scores``, best first; a stable sort keeps the incoming order on ties."""
    # argsort of the negated scores, stable, is a descending sort that keeps ties in order (-inf goes last).
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(items, order, axis=1)


# ---------------------------------------------------------------------- the SRM as an ONNX Runtime session
class CandidateScorer:
    """ONNX Runtime session of an exported SRM ``candidates`` graph, checked against its lsc4rec metadata."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        """Load ``path`` (CPU provider); refuse a file that is not an export_srm ``candidates`` graph."""
        if not path.is_file():
            raise PhoneClientError(f"ONNX model {path} does not exist", 2)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for a broken file
            raise PhoneClientError(
                f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})", 2
            ) from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(_METADATA_KEY)
        if raw is None:
            raise PhoneClientError(f"{path}: no lsc4rec metadata; export it with lsc4rec's export_srm", 2)
        self.metadata: dict[str, Any] = json.loads(raw)
        if self.metadata.get("kind") != "candidates":
            raise PhoneClientError(
                f"{path}: a {self.metadata.get('kind')!r} graph; the phone reranks with a 'candidates' graph",
                2,
            )
        self.path = path
        self.num_items = int(self.metadata["num_items"])
        self.max_len = int(self.metadata["max_len"])

    def score(self, history: list[int], candidates: np.ndarray) -> np.ndarray:
        """Scores ``[1, n]`` of ``candidates [1, n]`` after ``history`` (its last ``max_len`` items)."""
        recent = np.asarray(history[-self.max_len :], dtype=np.int64)[None, :]
        feeds = {"history": recent, "candidates": np.ascontiguousarray(candidates, dtype=np.int64)}
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)


# ---------------------------------------------------------------------- the candidate service over gRPC
def ask_candidates(
    address: str, ca: Path, token: str, history: list[int], n: int, timeout: float
) -> tuple[pb.ServiceInfo, pb.RecommendReply]:
    """``Info`` then ``Recommend`` over TLS with the bearer token; gRPC failures become PhoneClientError."""
    if not ca.is_file():
        raise PhoneClientError(f"--ca {ca} does not exist (the CA certificate from deploy/credentials.py)", 2)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.secure_channel(address, credentials) as channel:
        stub = pb_grpc.CandidateServiceStub(channel)
        method = "Info"
        try:
            info: pb.ServiceInfo = stub.Info(pb.InfoRequest(), timeout=timeout, metadata=metadata)
            recent = history[-info.max_history :]
            method = "Recommend"
            reply: pb.RecommendReply = stub.Recommend(
                pb.RecommendRequest(history=recent, n=n, request_id="phone-client"),
                timeout=timeout,
                metadata=metadata,
            )
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise PhoneClientError(
                f"candidate service {address} {method}: {code.name}: {details}", 3
            ) from None
    return info, reply


#: What a bearer token may hold: visible ASCII, no spaces (it travels as HTTP/2 header metadata).
_TOKEN_CHARACTERS = frozenset(chr(code) for code in range(0x21, 0x7F))


def read_token(path: Path) -> str:
    """The service token in ``path`` (surrounding whitespace dropped), or a clear error (exit 2) naming the
    file: missing, unreadable, empty, or holding what no bearer token holds (a PEM certificate, spaces)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise PhoneClientError(f"--token-file {path} cannot be read as text: {error}", 2) from None
    if not token:
        raise PhoneClientError(f"--token-file {path} is missing or empty", 2)
    if token.startswith("-----BEGIN"):
        raise PhoneClientError(
            f"--token-file {path} holds a PEM block (a certificate or key?), not the service token: pass the "
            "candidate-token file the deployment wrote (the CA certificate goes to --ca)",
            2,
        )
    odd = sorted({c for c in token if c not in _TOKEN_CHARACTERS})
    if odd:
        raise PhoneClientError(
            f"--token-file {path}: a bearer token is one line of visible ASCII; it holds {odd[:3]!r}", 2
        )
    return token


def parse_history(text: str) -> list[int]:
    """``--history`` as item ids (comma-separated, oldest first), or a clear error (exit 2) naming the
    entry."""
    history = []
    for position, entry in enumerate(text.split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        if not entry.isdecimal() or not entry.isascii():
            raise PhoneClientError(
                f"--history entry {position} is {entry!r}: item ids are whole numbers, comma-separated", 2
            )
        history.append(int(entry))
    if not history:
        raise PhoneClientError(
            "--history is empty: give the user's item ids, oldest first, comma-separated", 2
        )
    return history


def recommend(args: argparse.Namespace) -> dict[str, Any]:
    """The whole phone-side step: candidates from the cloud, SRM scores on the device, the final order."""
    token = read_token(args.token_file)
    history = parse_history(args.history)
    scorer = CandidateScorer(args.model, threads=args.threads)
    bad = [item for item in history if not 1 <= item <= scorer.num_items]
    if bad:
        raise PhoneClientError(f"--history item {bad[0]} is not an item id (1..{scorer.num_items})", 2)
    started = time.perf_counter()
    info, reply = ask_candidates(args.service, args.ca, token, history, args.n, args.timeout)
    rpc_ms = (time.perf_counter() - started) * 1000
    if info.num_items != scorer.num_items:
        raise PhoneClientError(
            f"{scorer.path} was exported for {scorer.num_items} items, the service's catalogue has "
            f"{info.num_items}: the device model and the cloud must share one item id space",
            2,
        )
    items = np.asarray(reply.items, dtype=np.int64)[None, :]
    llm_scores = np.asarray(reply.scores, dtype=np.float32)[None, :]
    started = time.perf_counter()
    srm_scores = scorer.score(history, items)
    onnx_ms = (time.perf_counter() - started) * 1000
    # Empty candidate slots (item 0) never rank: the graph already scores them -inf; make it explicit.
    srm_scores = np.where(items > 0, srm_scores, -np.inf).astype(np.float32)
    srm_order = rerank(items, srm_scores)
    final = fuse_scores(llm_scores, srm_scores, items, args.alpha, args.normalization)
    return {
        "candidates": items[0].tolist(),
        "llm_scores": [float(x) for x in llm_scores[0]],
        "srm_scores": [float(x) for x in srm_scores[0]],
        "srm_ranking": srm_order[0].tolist(),
        "ranking": rerank(items, final)[0].tolist(),
        "alpha": args.alpha,
        "normalization": args.normalization,
        "model_version": info.model_version,
        "rpc_ms": round(rpc_ms, 2),
        "onnx_ms": round(onnx_ms, 2),
        # The point of this client: nothing here may need torch (a phone has none).
        "torch_imported": "torch" in sys.modules,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--service", required=True, help="candidate service host:port (a name in its cert)")
    parser.add_argument("--ca", type=Path, required=True, help="CA certificate (PEM) to verify the service")
    parser.add_argument("--token-file", type=Path, required=True, help="file holding the service token")
    parser.add_argument("--model", type=Path, required=True, help="SRM 'candidates' graph from export_srm")
    parser.add_argument("--history", required=True, help="item ids, oldest first, comma-separated")
    parser.add_argument("--n", type=int, default=20, help="candidates to ask the cloud for")
    parser.add_argument("--alpha", type=float, default=0.0, help="LLM weight in the fusion (0: SRM only)")
    parser.add_argument("--normalization", default="minmax", choices=NORMALIZATIONS)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per gRPC call")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    try:
        result = recommend(args)
    except PhoneClientError as error:
        print(f"phone_client.py: error: {error}", file=sys.stderr)
        return error.status
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
