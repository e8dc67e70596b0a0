"""Generated datasets that are perfectly learnable, for tests and the drills: each user walks item i -> i+1
(mod the number of items) from a random start, and items of one block of consecutive ids share words in their
text, so the text says something true about the data."""

from __future__ import annotations

import json
import random
from pathlib import Path

__all__ = ["PATTERN_WORDS", "write_pattern_dataset", "write_pattern_text"]


def write_pattern_dataset(
    path: Path, num_users: int = 300, num_items: int = 60, seed: int = 0, lengths: tuple[int, int] = (5, 12)
) -> Path:
    """S3-Rec file whose users walk item i -> i+1 (mod num_items) from a random start: perfectly learnable."""
    rng = random.Random(seed)
    lines = []
    for user in range(1, num_users + 1):
        start, length = rng.randrange(num_items), rng.randint(*lengths)
        lines.append(" ".join(str(x) for x in [user, *((start + i) % num_items + 1 for i in range(length))]))
    path.write_text("\n".join(lines) + "\n")
    return path


PATTERN_WORDS = ("red", "blue", "green", "amber", "violet", "silver", "coral", "ivory", "olive", "teal")


def write_pattern_text(data: Path, num_items: int, group: int = 4) -> Path:
    """Item text beside a pattern dataset: items of one block of ``group`` consecutive ids share their words.

    Neighbours on the walk (i -> i+1) mostly share a block, so text says something true about the data.
    """
    lines = []
    for item in range(1, num_items + 1):
        block = (item - 1) // group
        word = PATTERN_WORDS[block % len(PATTERN_WORDS)]
        record = {"item_id": item, "title": f"{word} {word} lipstick set {block}", "brand": f"{word} house"}
        lines.append(json.dumps(record))
    path = data.with_name(f"{data.stem}_item_text.jsonl")
    path.write_text("\n".join(lines) + "\n")
    return path
