"""Data layer: read raw interaction files, map ids, split leave-one-out and batch as left-padded tensors.

Conventions: raw ids in files are integers; internal item ids are 1..num_items (0 is padding); internal user
ids are 0..num_users-1; histories given to models are LongTensors ``[B, L]`` left-padded with 0.
"""

from lsc4rec.data.batching import EvalBatch, EvalBatches, TrainBatches, pad_left
from lsc4rec.data.dataset_registry import (
    EMBEDDED_DATASETS,
    MOVIELENS_NAMES,
    EmbeddedDataset,
    embedded_attributes_path,
    embedded_path,
    embedded_text_path,
    load_dataset,
)
from lsc4rec.data.errors import DataFileNotFoundError, DataFormatError
from lsc4rec.data.item_text import ItemText, item_text_from_titles, read_item_text
from lsc4rec.data.readers import (
    FORMATS,
    ML100K_GENRES,
    RawDataset,
    detect_format,
    load_raw,
    read_item_attributes,
    read_movielens,
    read_pair_file,
    read_sequence_file,
)
from lsc4rec.data.split import MIN_EVAL_LENGTH, IdMap, LeaveOneOutSplit, leave_one_out

__all__ = [
    "EMBEDDED_DATASETS",
    "FORMATS",
    "MIN_EVAL_LENGTH",
    "ML100K_GENRES",
    "MOVIELENS_NAMES",
    "DataFileNotFoundError",
    "DataFormatError",
    "EmbeddedDataset",
    "EvalBatch",
    "EvalBatches",
    "IdMap",
    "ItemText",
    "LeaveOneOutSplit",
    "RawDataset",
    "TrainBatches",
    "detect_format",
    "embedded_attributes_path",
    "embedded_path",
    "embedded_text_path",
    "item_text_from_titles",
    "leave_one_out",
    "load_dataset",
    "load_raw",
    "pad_left",
    "read_item_attributes",
    "read_item_text",
    "read_movielens",
    "read_pair_file",
    "read_sequence_file",
]
