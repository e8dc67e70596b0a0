"""Argument types for the command lines of deploy/ and benchmarks/: a bad value is a clean usage error.

``argparse`` turns the :class:`argparse.ArgumentTypeError` these raise into ``error: argument --flag: ...``
and exit status 2, naming the flag and the value, instead of a traceback from deep inside the script::

    parser.add_argument("--clients", type=positive_int, default=128)
    parser.add_argument("--llm-path", type=existing_dir, default=None)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = [
    "existing_dir",
    "existing_file",
    "fraction",
    "host_port",
    "non_negative_float",
    "non_negative_int",
    "port",
    "positive_float",
    "positive_int",
]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535, got {value}")
    return value


def host_port(text: str) -> str:
    """``host:port`` (IPv6 hosts in brackets, ``[::1]:50051``), the port in 0..65535."""
    host, separator, number = text.rpartition(":")
    if not separator or not host or not number.isdigit() or not 0 <= int(number) <= 65535:
        raise argparse.ArgumentTypeError(f"must be host:port (e.g. 127.0.0.1:50051), got {text!r}")
    return text


def existing_file(text: str) -> Path:
    """A path to a readable file."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a file")
    return path


def existing_dir(text: str) -> Path:
    """A path to a folder."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is not a folder")
    return path
