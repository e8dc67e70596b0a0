"""Logs are for people: third-party libraries speak at WARNING unless asked.

The ONNX exporter (``torch.onnx``, ``onnxscript``, ``onnx_ir``) logs thousands of INFO lines per export,
``httpx`` logs every request a Flower process makes (``push-logs``), Ray and urllib3 log their plumbing. This
package's own loggers (``lsc4rec.*``) and Flower's round log are left alone. Set
``LSC4REC_THIRD_PARTY_LOG_LEVEL`` (``INFO``, ``DEBUG``, ...) to hear the libraries again.
"""

from __future__ import annotations

import logging
import os

__all__ = ["THIRD_PARTY_LOGGERS", "FlowerPerNodeChatter", "UnactionableWarnings", "quiet_third_party_loggers"]

#: Loggers of libraries whose INFO output is plumbing, not progress.
THIRD_PARTY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._dynamo",
    "onnxscript",
    "onnx_ir",
    "httpx",
    "httpcore",
    "urllib3",
    "ray",
    "filelock",
    "matplotlib",
    "PIL",
    "huggingface_hub",
    "transformers",
    # The run trackers (lsc4rec.tracking): TensorBoard's writer, MLflow's client and its database migrations,
    # W&B.
    "tensorboard",
    "mlflow",
    "alembic",
    "wandb",
)

ENV_LEVEL = "LSC4REC_THIRD_PARTY_LOG_LEVEL"


class UnactionableWarnings(logging.Filter):
    """Drop library warnings a user of this package cannot act on (the ONNX exporter announces, on every
    export, that torchvision's detection operators are unavailable: no lsc4rec model uses them)."""

    PREFIXES = ("torchvision is not installed",)

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record whose message starts with one of :attr:`PREFIXES`."""
        return not str(record.getMessage()).startswith(self.PREFIXES)


class FlowerPerNodeChatter(logging.Filter):
    """Drop Flower's INFO lines that repeat once per node per round (its central DP wrappers announce every
    node's clipping: 300 lines a round at 300 nodes); the round log and the noise line stay."""

    PREFIXES = ("aggregate_fit: parameters are clipped by value",)

    def filter(self, record: logging.LogRecord) -> bool:
        """False for an INFO (or lower) record whose message starts with one of :attr:`PREFIXES`."""
        if record.levelno > logging.INFO:
            return True
        return not str(record.getMessage()).startswith(self.PREFIXES)


def quiet_third_party_loggers() -> int:
    """Set every logger of :data:`THIRD_PARTY_LOGGERS` to ``$LSC4REC_THIRD_PARTY_LOG_LEVEL`` (default
    WARNING); return the level set. An unknown level name is an error naming the variable."""
    name = os.environ.get(ENV_LEVEL, "WARNING").upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ValueError(f"{ENV_LEVEL}={name!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    for logger_name in THIRD_PARTY_LOGGERS:
        logging.getLogger(logger_name).setLevel(level)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    if not any(isinstance(f, UnactionableWarnings) for f in registration.filters):
        registration.addFilter(UnactionableWarnings())
    flower = logging.getLogger("flwr")
    chatter = [f for f in flower.filters if isinstance(f, FlowerPerNodeChatter)]
    if level > logging.INFO and not chatter:
        flower.addFilter(FlowerPerNodeChatter())
    elif level <= logging.INFO:
        for f in chatter:
            flower.removeFilter(f)
    return level
