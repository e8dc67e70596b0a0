"""The centralized baseline's learning-curve plot, for models evaluated with full ranking or sampled only."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsc4rec.reporting import plot_learning_curve


@pytest.mark.parametrize("protocols", [("full", "sampled"), ("sampled",)])
def test_the_curve_plots_whatever_protocol_the_run_evaluated(
    protocols: tuple[str, ...], tmp_path: Path
) -> None:
    # DIN is evaluated with the sampled protocol only: its curve must plot that instead of failing.
    history = [
        {"epoch": epoch, "train_loss": 1.0 / epoch, "valid": {p: {"NDCG@10": 0.1 * epoch} for p in protocols}}
        for epoch in (1, 2, 3)
    ]
    path = plot_learning_curve(history, tmp_path / "curve.png", best_epoch=3, title="t")
    assert path.stat().st_size > 1000
