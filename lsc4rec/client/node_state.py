"""A node's state on its own disk, round by round, so a resumed run's nodes continue where they stopped.

What a node carries across rounds lives in Flower's ``context.state`` (Adam moments, the catalogue's text
vectors, the SOLID codebook copy, its counters); a new ``flwr run`` (the resume of a crashed one) starts every
node with an empty one. :func:`node_state_mod` writes the state after each message of a round to
``<federated.node_state_dir or output_dir/run_name/node-state>/partition-<i>/round-<r>.state`` (atomically,
the last two rounds kept; each record a content-addressed file, :mod:`lsc4rec.client.record_store`, so the
public catalogue every node holds is on disk once) and, in a resumed run (``federated.resume=true``), reads
the one of the round the server's checkpoint holds before the node handles its first message. A node without
a saved state starts empty, as before (the server sends what it lacks again). The privacy ledger keeps its
own file (:mod:`lsc4rec.client.privacy_ledger`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import recorddict_from_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from lsc4rec.client.node import node_settings, partition_of
from lsc4rec.client.record_store import RecordStore, record_bytes, record_from_bytes
from lsc4rec.messages import CONFIG, PHASE, PHASE_TEST, SERVER_ROUND
from lsc4rec.reporting import run_folder

__all__ = ["load_node_state", "node_state_mod", "save_node_state", "state_directory"]

logger = logging.getLogger(__name__)

#: context.state key marking that this run's node has read its saved state (done once per run).
RESTORED = "node-state-restored"

_FILE = re.compile(r"round-(\d+)\.state")

#: The round files' format: a JSON manifest naming each record by its digest (older files: one proto).
MANIFEST_FORMAT = 2


def state_directory(context: Context, partition_id: int) -> Path:
    """Where this node's saved states live (the node's own disk; by default in the run's folder)."""
    run = node_settings(context)
    root = run.federated.node_state_dir or run_folder(context.run_config, run.output_dir, run.run_name) / (
        "node-state"
    )
    return Path(root) / f"partition-{partition_id}"


def save_node_state(state: RecordDict, directory: Path, server_round: int) -> Path:
    """Write ``state`` as round ``server_round``'s (atomic); drop rounds older than the one before.

    The round's file names each record by its digest; the records are files of a :class:`RecordStore`, so
    what does not change between rounds (the catalogue's text, the codebook) is written once, and once for
    every node that saves under the same root.
    """
    directory.mkdir(parents=True, exist_ok=True)
    store = RecordStore(directory)
    manifest = {
        "format": MANIFEST_FORMAT,
        "records": {
            key: store.put(record_bytes(key, value)) for key, value in state.items() if key != RESTORED
        },
    }
    path = directory / f"round-{server_round}.state"
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    kept: set[str] = set()
    for saved in directory.glob("round-*.state"):
        match = _FILE.fullmatch(saved.name)
        if match and int(match.group(1)) < server_round - 1:
            saved.unlink(missing_ok=True)
        elif match:
            kept |= set(_manifest(saved).get("records", {}).values())
    store.keep_only(kept)
    return path


def _manifest(path: Path) -> dict:
    """A round file's manifest; empty for a file of the older format (the whole state in one proto)."""
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def load_node_state(directory: Path, before_round: int) -> tuple[RecordDict, int] | None:
    """The latest saved state of a round before ``before_round`` and its round; None when there is none."""
    rounds = sorted(
        int(match.group(1))
        for path in directory.glob("round-*.state")
        if (match := _FILE.fullmatch(path.name)) and int(match.group(1)) < before_round
    )
    if not rounds:
        return None
    path = directory / f"round-{rounds[-1]}.state"
    try:
        manifest = _manifest(path)
        if manifest.get("format") != MANIFEST_FORMAT:
            # A state saved by an earlier version: the whole RecordDict in one file.
            proto = ProtoRecordDict()
            proto.ParseFromString(path.read_bytes())
            return recorddict_from_proto(proto), rounds[-1]
        store = RecordStore(directory)
        state = RecordDict()
        for key, digest in manifest["records"].items():
            state[key] = record_from_bytes(store.get(digest))[key]
        return state, rounds[-1]
    except Exception as error:  # a damaged file must not stop the node: it starts empty, as without one
        logger.warning("node state %s is unreadable (%s): the node starts without it", path, error)
        return None


def node_state_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Restore this node's saved state once in a resumed run; save it after every message of a round.

    Only where the server checkpoints (``federated.checkpoint``): without a checkpoint there is nothing to
    resume to. The final test phase is not saved (no round follows it).
    """
    run = node_settings(context)
    config = msg.content.config_records.get(CONFIG)
    if not run.federated.checkpoint or config is None or SERVER_ROUND not in config:
        return call_next(msg, context)
    server_round = int(config[SERVER_ROUND])
    directory = state_directory(context, partition_of(context)[0])
    if run.federated.resume and RESTORED not in context.state:
        saved = load_node_state(directory, server_round)
        if saved is not None:
            state, saved_round = saved
            for key, value in state.items():
                context.state[key] = value
            logger.info("node state of round %d restored from %s", saved_round, directory)
        context.state[RESTORED] = ConfigRecord({"round": server_round})
    reply = call_next(msg, context)
    if not reply.has_error() and str(config.get(PHASE, "")) != PHASE_TEST:
        save_node_state(context.state, directory, server_round)
    return reply
