"""The typed settings of MergeNet and the distillation baselines (``conf/mergenet/default.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MergeNetSettings"]


@dataclass(frozen=True)
class MergeNetSettings:
    """MergeNet's parameter adapter, the KD baselines and the MergeNet study (``mergenet.*``).

    ``source`` / ``target``: the paired parameters (``llm.item_embeddings``, ``srm.item_embeddings``, or
    ``llm:<name>`` / ``srm:<name>``); ``rank``: rank of the source's SVD factors the adapter attends to;
    ``t_cycle``: a transfer every t_cycle training steps; ``aligned``: row-aligned adapter (auto: when both
    are item tables, or true / false); ``num_layers``, ``attention_dim``, ``heads``, ``dropout``: the
    adapter's shape; ``signal``: what it learns from (gradient or step); ``lr``, ``weight_decay``,
    ``grad_clip``: its AdamW optimiser; ``max_change``: largest change of one transfer, in units of the
    target's RMS; ``train_source`` / ``source_lr``: the source (LLM) steps on its own data after every SRM
    step; ``kd_weight`` / ``kd_temperature``: the KD baseline's beta and T; ``kd_list``: list KD's number of
    LLM top items; ``text_codes``: codebook level sizes of the compact text carrier (text_part_codes);
    ``directions``: cloud_to_device and / or device_to_cloud; ``llm_finetune_epochs``: the LLM's epochs in
    device_to_cloud; ``device_users``: share of users whose fresh data the device SRM trains on;
    ``every_rounds``: federated runs transfer before every k-th round (0 = off).
    """

    source: str = "llm.item_embeddings"
    target: str = "srm.item_embeddings"
    rank: int = 16
    t_cycle: int = 2
    aligned: bool | str = "auto"
    num_layers: int = 2
    attention_dim: int = 64
    heads: int = 4
    dropout: float = 0.1
    signal: str = "gradient"
    lr: float = 0.0001
    max_change: float = 0.05
    weight_decay: float = 0.0005
    grad_clip: float = 50.0
    train_source: bool = True
    source_lr: float = 0.0005
    kd_weight: float = 1.0
    kd_temperature: float = 2.0
    kd_list: int = 50
    text_codes: tuple[int, ...] = (256, 256, 256, 256)
    directions: tuple[str, ...] = ("cloud_to_device", "device_to_cloud")
    llm_finetune_epochs: int = 2
    device_users: float = 1.0
    every_rounds: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.aligned, str) and self.aligned != "auto":
            raise ValueError(f"mergenet.aligned must be auto, true or false, got {self.aligned!r}")
        if self.signal not in ("gradient", "step"):
            raise ValueError(f"mergenet.signal must be 'gradient' or 'step', got {self.signal!r}")
