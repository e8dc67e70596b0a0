"""Content-addressed files of a node's saved records, so a record every node holds is on disk once.

A node saves its ``context.state`` every round (:mod:`lsc4rec.client.node_state`). Most of its bytes are
public and the same on every node and in every round: the catalogue's text vectors (9.3 MB on Beauty) and
the SOLID codebook. Saved whole per round they cost ``nodes × kept rounds`` copies (11 GB for 1,000 simulated
SuperNodes). Here each record is one file named by the SHA-256 of its bytes:

- ``<partition>/records/<digest>.record``: the records a partition's kept rounds refer to;
- ``<root>/records/<digest>.record``: an index of every record any partition of ``<root>`` holds, each entry
  a hard link to the same file, so the catalogue's vectors saved by 1,000 nodes are one file with 1,001 names.

A partition only ever removes its own names; the index drops an entry whose file no partition names any more.
Hard links make that safe without locks between the nodes' processes: a file's bytes live while any name
does, so removing an index entry another node has just linked to loses nothing (that node then writes the
file afresh). Where the disk does not offer hard links (another file system under the index), a partition
keeps its own copy.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from flwr.app import RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

__all__ = ["RecordStore", "record_bytes", "record_from_bytes"]

RECORDS = "records"
SUFFIX = ".record"


def record_bytes(key: str, record: object) -> bytes:
    """One record and its key, serialized the same way every time (the bytes its digest is taken of)."""
    return recorddict_to_proto(RecordDict({key: record})).SerializeToString(deterministic=True)


def record_from_bytes(data: bytes) -> RecordDict:
    """The one-record ``RecordDict`` that :func:`record_bytes` wrote."""
    proto = ProtoRecordDict()
    proto.ParseFromString(data)
    return recorddict_from_proto(proto)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class RecordStore:
    """A partition's record files, shared with the other partitions under the same root by hard links."""

    def __init__(self, directory: Path) -> None:
        self.own = directory / RECORDS
        self.index = directory.parent / RECORDS

    def path(self, digest: str) -> Path:
        """Where this partition keeps the record of ``digest``."""
        return self.own / f"{digest}{SUFFIX}"

    def put(self, data: bytes) -> str:
        """Keep ``data`` under its digest (linked from the index when another partition holds it)."""
        digest = hashlib.sha256(data).hexdigest()
        mine = self.path(digest)
        if mine.exists():
            return digest
        self.own.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(parents=True, exist_ok=True)
        shared = self.index / mine.name
        if not self._link(shared, mine):
            _write_atomically(mine, data)
            self._link(mine, shared)
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes this partition keeps under ``digest`` (checked against it)."""
        data = self.path(digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"record file {self.path(digest)} does not hold the bytes of its name (damaged)")
        return data

    def keep_only(self, digests: set[str]) -> None:
        """Remove this partition's records outside ``digests``, and index entries no partition names now."""
        if not self.own.is_dir():
            return
        for path in self.own.glob(f"*{SUFFIX}"):
            if path.name.removesuffix(SUFFIX) in digests:
                continue
            path.unlink(missing_ok=True)
            shared = self.index / path.name
            try:
                if shared.stat().st_nlink <= 1:
                    shared.unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    @staticmethod
    def _link(source: Path, target: Path) -> bool:
        """Give ``source``'s file the name ``target``; False where there is no such file or no hard links."""
        try:
            os.link(source, target)
            return True
        except FileExistsError:
            return True
        except FileNotFoundError:
            return False
        except OSError as error:
            # No hard links on this file system, or the index is on another one: keep a copy of our own.
            if error.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                return False
            raise
