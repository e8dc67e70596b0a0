"""How a command-line entry point ends on bad input: the clear message, exit code 2, no traceback, no empty
run folder.

Readers, settings and builders raise ``ValueError`` / ``OSError`` (and :class:`CheckpointError`) with a
message naming the file, key or value at fault; a traceback through Hydra in front of it only hides it. Set
``LSC4REC_TRACEBACK=1`` to see the traceback anyway (debugging this package).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from lsc4rec.server.components.checkpoint_files import CheckpointError

__all__ = ["USAGE_ERROR", "clean_failed_run", "exit_on_bad_input"]

#: The exit status of a command refused for its input (the shell's convention for usage errors).
USAGE_ERROR = 2
#: What Hydra writes into every run folder before the job starts: a folder holding only these is empty.
HYDRA_FILES = (".hydra",)


def clean_failed_run(folder: Path) -> bool:
    """Remove ``folder`` when the failed run left nothing in it but Hydra's own files; True if removed."""
    if not folder.is_dir():
        return False
    left = [
        p for p in folder.iterdir() if p.name not in HYDRA_FILES and not (p.suffix == ".log" and p.is_file())
    ]
    if left:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def exit_on_bad_input(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a ``@hydra.main`` function: on bad input print ``error: <message>`` and exit with
    :data:`USAGE_ERROR`, removing the run folder if the run wrote nothing into it."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except (ValueError, OSError, CheckpointError) as error:
            if os.environ.get("LSC4REC_TRACEBACK"):
                raise
            if HydraConfig.initialized():
                clean_failed_run(Path(HydraConfig.get().runtime.output_dir))
            sys.stderr.write(f"error: {error}\n")
            sys.exit(USAGE_ERROR)

    return wrapped
