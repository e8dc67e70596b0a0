"""LSC4Rec collaborative training: the device SRM learns to rerank the cloud LLM's candidate lists.

Stage 2 of the paper (stage 1 trains both models independently): for every training position the frozen
cloud LLM proposes its top-k next items, and the SRM is trained to put the true next item above those hard
candidates and above random ones (:func:`candidate_rerank_loss`). Stage 3, adaptive re-training on the
device's fresh data with the ordinary objective, is the usual :func:`lsc4rec.training.fit` started from the
result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from lsc4rec.client.collab.list_training import rerank_step
from lsc4rec.data import TrainBatches
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.training import TrainSettings

logger = logging.getLogger(__name__)

__all__ = ["train_on_llm_candidates"]


def train_on_llm_candidates(
    srm: SequentialRecommender,
    llm: CloudLLM,
    sequences: Sequence[Sequence[int]],
    settings: TrainSettings,
    max_len: int,
    epochs: int = 2,
    hard_negatives: int = 20,
    random_negatives: int = 100,
    seed: int = 0,
    distill_weight: float = 0.0,
    temperature: float = 1.0,
) -> list[float]:
    """Train ``srm`` for ``epochs`` on ``sequences`` against the LLM's candidates; return the epoch losses.

    ``distill_weight > 0`` adds list distillation: the LLM's scores of its listed items are soft targets
    for the SRM's scores of the same items (:func:`lsc4rec.models.srm.list_distillation_loss`).
    """
    if epochs < 1 or hard_negatives < 1 or random_negatives < 0:
        raise ValueError(
            f"collab.srm_epochs ({epochs}) and collab.hard_negatives ({hard_negatives}) must be >= 1, "
            f"collab.random_negatives ({random_negatives}) >= 0"
        )
    batches = TrainBatches(sequences, max_len, settings.batch_size, seed=seed)
    optimizer = settings.make_optimizer(srm.parameters())
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(1, epochs + 1):
        batches.set_epoch(epoch)
        srm.train()
        total, count = 0.0, 0
        for inputs, targets in tqdm(
            batches,
            desc=f"collaborative epoch {epoch}",
            leave=False,
            disable=not settings.progress,
            mininterval=1.0,
        ):
            hard, teacher = llm.position_candidate_scores(inputs, hard_negatives)
            total += rerank_step(
                srm,
                optimizer,
                inputs,
                targets,
                hard,
                generator,
                random_negatives,
                settings.grad_clip,
                teacher,
                distill_weight,
                temperature,
            )
            count += 1
        losses.append(total / max(count, 1))
        logger.info("collaborative epoch %d: rerank loss %.4f", epoch, losses[-1])
    return losses
