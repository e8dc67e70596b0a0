"""Raw -> internal id mapping and the leave-one-out split (last item test, second-to-last validation)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from lsc4rec.data.item_text import ItemText
from lsc4rec.data.readers import RawDataset

logger = logging.getLogger(__name__)

#: Users need this many interactions to get a training part, a validation item and a test item.
MIN_EVAL_LENGTH = 3


class IdMap:
    """Invertible map between raw ids and contiguous internal ids ``start, start+1, ...``.

    Internal ids follow the order in which raw ids were first seen, so building from the same data always
    gives the same map. Items use ``start=1`` (0 is padding), users ``start=0``.
    """

    def __init__(self, raw_ids: Sequence[int], start: int = 1, kind: str = "id") -> None:
        """Wrap ``raw_ids`` (distinct, in internal-id order); prefer :meth:`build`."""
        self.start = int(start)
        self.kind = kind
        self._raw = np.asarray([int(r) for r in raw_ids], dtype=np.int64)
        self._to_internal = {int(raw): self.start + i for i, raw in enumerate(self._raw.tolist())}
        if len(self._to_internal) != len(self._raw):
            raise ValueError(f"{kind} map: raw ids are not distinct")
        # Sorted copy for vectorised look-ups with searchsorted.
        self._order = np.argsort(self._raw, kind="stable")
        self._sorted_raw = self._raw[self._order]

    @classmethod
    def build(cls, raw_ids: Iterable[int], start: int = 1, kind: str = "id") -> IdMap:
        """Map raw ids to ``start, start+1, ...`` in order of first appearance (repeats are ignored)."""
        return cls(list(dict.fromkeys(int(r) for r in raw_ids)), start=start, kind=kind)

    def __len__(self) -> int:
        """Number of mapped ids."""
        return len(self._raw)

    def __contains__(self, raw: object) -> bool:
        """Whether ``raw`` is a known raw id."""
        return raw in self._to_internal

    def __eq__(self, other: object) -> bool:
        """Two maps are equal when they map the same raw ids to the same internal ids."""
        if not isinstance(other, IdMap):
            return NotImplemented
        return self.start == other.start and np.array_equal(self._raw, other._raw)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking value type: equality without hashing

    def __repr__(self) -> str:
        return f"IdMap(kind={self.kind!r}, size={len(self)}, start={self.start})"

    @property
    def raw_ids(self) -> list[int]:
        """Raw ids in internal-id order: ``raw_ids[i]`` has internal id ``start + i``."""
        return self._raw.tolist()

    def to_internal(self, raw: int) -> int:
        """Internal id of raw id ``raw``; KeyError if it was never seen."""
        try:
            return self._to_internal[int(raw)]
        except KeyError:
            message = f"raw {self.kind} id {raw} is not in the {self.kind} map ({len(self)} ids)"
            raise KeyError(message) from None

    def to_raw(self, internal: int) -> int:
        """Raw id of internal id ``internal``; KeyError if it is outside ``start .. start+len-1``."""
        index = int(internal) - self.start
        if not 0 <= index < len(self._raw):
            raise KeyError(
                f"internal {self.kind} id {internal} is outside {self.start}..{self.start + len(self) - 1}"
            )
        return int(self._raw[index])

    def to_internal_many(self, raws: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectorised :meth:`to_internal`: an int64 array of the same shape; KeyError names an unknown id."""
        values = np.asarray(raws, dtype=np.int64)
        if values.size == 0 or len(self) == 0:
            if values.size:
                raise KeyError(f"raw {self.kind} id {values.flat[0]} is not in the empty {self.kind} map")
            return np.zeros(values.shape, dtype=np.int64)
        pos = np.searchsorted(self._sorted_raw, values)
        pos_clipped = np.minimum(pos, len(self._sorted_raw) - 1)
        found = self._sorted_raw[pos_clipped] == values
        if not found.all():
            missing = values[~found].flat[0]
            raise KeyError(f"raw {self.kind} id {missing} is not in the {self.kind} map ({len(self)} ids)")
        return self._order[pos_clipped].astype(np.int64) + self.start

    def to_raw_many(self, internals: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectorised :meth:`to_raw`: an int64 array of the same shape; KeyError names an out-of-range id."""
        index = np.asarray(internals, dtype=np.int64) - self.start
        bad = (index < 0) | (index >= len(self._raw))
        if bad.any():
            internal = int(index[bad].flat[0]) + self.start
            raise KeyError(
                f"internal {self.kind} id {internal} is outside {self.start}..{self.start + len(self) - 1}"
            )
        return self._raw[index]


@dataclass
class LeaveOneOutSplit:
    """Leave-one-out split in internal ids.

    Row ``u`` of ``train``/``valid_targets``/``test_targets`` belongs to internal user ``u`` (``user_map``
    covers evaluated users only). ``train_only`` holds the sequences of users with fewer than 3 interactions
    (raw ids in ``train_only_users``): they cannot be evaluated but still train when they have >= 2 items.
    """

    name: str
    num_items: int
    item_map: IdMap
    user_map: IdMap
    train: list[list[int]]
    valid_targets: list[int]
    test_targets: list[int]
    train_only: list[list[int]]
    report: dict[str, int | float]
    train_only_users: list[int] = field(default_factory=list)
    #: Internal ids (sorted) of the users whose validation item is held out of training and used for model
    #: selection; None = every evaluated user (S3-Rec / RecBole protocol). See :meth:`with_validation_users`.
    validation_users: list[int] | None = None
    #: Item text keyed by internal item id (items without text are absent); see :mod:`lsc4rec.data.item_text`.
    item_text: dict[int, ItemText] = field(default_factory=dict)
    #: Interaction times parallel to ``train_sequences(include_test=True)`` (evaluated users, then
    #: ``train_only``); None when the dataset has no clock.
    timestamps: list[list[float]] | None = None

    def with_validation_users(self, count: int, seed: int) -> LeaveOneOutSplit:
        """The same split with only ``count`` seeded users holding their validation item out of training.

        Every other evaluated user trains on its validation item (everything before its test item), and model
        selection reads the ``count`` held-out users: the validation protocol of the gSASRec and eSASRec
        benchmarks (2,048 validation users). Test still covers every evaluated user.
        """
        users = len(self.train)
        if not 1 <= int(count) <= users:
            raise ValueError(
                f"{self.name}: validation_users={count} must be between 1 and {users} (evaluated users)"
            )
        chosen = np.random.default_rng(int(seed)).choice(users, size=int(count), replace=False)
        return replace(self, validation_users=sorted(int(u) for u in chosen))

    def validation_rows(self) -> list[int]:
        """Evaluated users whose validation item is scored for model selection (all unless restricted)."""
        return list(range(len(self.train))) if self.validation_users is None else list(self.validation_users)

    def train_sequences(self, include_valid: bool = False, include_test: bool = False) -> list[list[int]]:
        """Training sequences: evaluated users' train parts, then the ``train_only`` sequences.

        ``include_valid`` appends each user's validation item; ``include_test`` appends the validation and the
        test item (the full sequences; implies ``include_valid``, since the test item follows the valid one).
        Under :meth:`with_validation_users`, users outside the validation sample always train on their
        validation item.
        """
        if include_test:
            rows = zip(self.train, self.valid_targets, self.test_targets, strict=True)
            evaluated = [[*t, v, s] for t, v, s in rows]
        else:
            held_out = set() if include_valid else set(self.validation_rows())
            evaluated = [
                list(t) if u in held_out else [*t, v]
                for u, (t, v) in enumerate(zip(self.train, self.valid_targets, strict=True))
            ]
        return evaluated + [list(seq) for seq in self.train_only]

    def subset(self, users: Sequence[int]) -> LeaveOneOutSplit:
        """The split of the evaluated users ``users`` only (internal ids, renumbered 0..len-1 in that order).

        The item ids and catalogue stay; ``train_only`` sequences (no user to evaluate) are dropped; a
        validation-user sample keeps those of its users that are in ``users``.
        """
        rows = [int(u) for u in users]
        bad = [u for u in rows if not 0 <= u < len(self.train)]
        if bad:
            raise ValueError(f"subset of {self.name}: users {bad[:5]} outside 0..{len(self.train) - 1}")
        raw_users = [self.user_map.to_raw(u) for u in rows]
        validation_users = None
        if self.validation_users is not None:
            held_out = set(self.validation_users)
            validation_users = [i for i, u in enumerate(rows) if u in held_out]
            if not validation_users:
                raise ValueError(f"subset of {self.name}: none of its {len(rows)} users is a validation user")
        return LeaveOneOutSplit(
            name=self.name,
            num_items=self.num_items,
            item_map=self.item_map,
            user_map=IdMap(raw_users, start=0, kind="user"),
            train=[list(self.train[u]) for u in rows],
            valid_targets=[self.valid_targets[u] for u in rows],
            test_targets=[self.test_targets[u] for u in rows],
            train_only=[],
            report={**self.report, "users_evaluated": len(rows)},
            validation_users=validation_users,
            item_text=self.item_text,
            timestamps=None if self.timestamps is None else [list(self.timestamps[u]) for u in rows],
        )

    def valid_histories(self) -> list[list[int]]:
        """Histories for predicting ``valid_targets``: each evaluated user's train part."""
        return [list(t) for t in self.train]

    def test_histories(self) -> list[list[int]]:
        """Histories for predicting ``test_targets``: each evaluated user's train part plus the valid item."""
        return [[*t, v] for t, v in zip(self.train, self.valid_targets, strict=True)]


def _split_report(
    users_total: int,
    users_evaluated: int,
    too_short: int,
    lengths: list[int],
    items: int,
    item_text: dict[int, ItemText],
) -> dict[str, int | float]:
    """The split's ``report``: user counts, catalogue size, sequence-length statistics and text coverage."""
    interactions = sum(lengths)
    return {
        "users_total": users_total,
        "users_evaluated": users_evaluated,
        "users_too_short": too_short,
        "users_single_interaction": sum(1 for n in lengths if n < 2),
        "items": items,
        "interactions": interactions,
        "mean_sequence_length": round(interactions / len(lengths), 4) if lengths else 0.0,
        "min_sequence_length": min(lengths) if lengths else 0,
        "max_sequence_length": max(lengths) if lengths else 0,
        "density": round(interactions / (len(lengths) * items), 6) if items else 0.0,
        "items_with_text": len(item_text),
        "items_with_title": sum(1 for text in item_text.values() if text.title),
    }


def leave_one_out(raw: RawDataset) -> LeaveOneOutSplit:
    """Split each user's sequence into train (all but the last two), validation (second-to-last), test (last).

    Item ids are mapped to ``1..num_items`` in order of first appearance over all users (train-only users
    included); evaluated users to ``0..num_users-1`` in dataset order. Users with fewer than 3 interactions
    are kept as train-only, counted in ``report["users_too_short"]`` and logged with a WARNING.
    """
    if len(raw.user_ids) != len(raw.sequences):
        raise ValueError(
            f"{raw.name}: {len(raw.user_ids)} user ids but {len(raw.sequences)} sequences (must be parallel)"
        )
    item_map = IdMap.build((item for seq in raw.sequences for item in seq), start=1, kind="item")
    lookup = item_map._to_internal  # direct dict access: this loop touches every interaction once

    train: list[list[int]] = []
    valid_targets: list[int] = []
    test_targets: list[int] = []
    evaluated_users: list[int] = []
    train_only: list[list[int]] = []
    train_only_users: list[int] = []
    lengths: list[int] = []
    evaluated_times: list[list[float]] = []
    train_only_times: list[list[float]] = []
    stamps = raw.timestamps if raw.timestamps is not None else [None] * len(raw.sequences)
    if len(stamps) != len(raw.sequences):
        raise ValueError(f"{raw.name}: {len(stamps)} timestamp rows but {len(raw.sequences)} sequences")
    for user, seq, times in zip(raw.user_ids, raw.sequences, stamps, strict=True):
        internal = [lookup[item] for item in seq]
        lengths.append(len(internal))
        if len(internal) < MIN_EVAL_LENGTH:
            train_only.append(internal)
            train_only_users.append(user)
            train_only_times.append(list(times or []))
            continue
        evaluated_users.append(user)
        evaluated_times.append(list(times or []))
        train.append(internal[:-2])
        valid_targets.append(internal[-2])
        test_targets.append(internal[-1])

    too_short = len(train_only)
    if too_short:
        logger.warning(
            "%d users with fewer than %d interactions are train-only (%s: %d of %d users)",
            too_short,
            MIN_EVAL_LENGTH,
            raw.name,
            too_short,
            len(raw.user_ids),
        )
    item_text = {
        item_map.to_internal(raw_item): text
        for raw_item, text in raw.item_text.items()
        if raw_item in item_map and not text.is_empty
    }
    report = _split_report(
        len(raw.user_ids), len(evaluated_users), too_short, lengths, len(item_map), item_text
    )
    return LeaveOneOutSplit(
        name=raw.name,
        num_items=len(item_map),
        item_map=item_map,
        user_map=IdMap.build(evaluated_users, start=0, kind="user"),
        train=train,
        valid_targets=valid_targets,
        test_targets=test_targets,
        train_only=train_only,
        report=report,
        train_only_users=train_only_users,
        item_text=item_text,
        timestamps=None if raw.timestamps is None else evaluated_times + train_only_times,
    )
