"""The one list of the round loop's components: what each needs, how it is built, in which order it acts.

A component is one capability of a federated run (checkpoints, MergeNet, the catalogue's text, SOLID's
codebook, the cloud collaboration, the progress file, privacy accounting, the fresh prior, tracking). Each
entry of :data:`COMPONENTS` names it, says which settings it needs or refuses (:attr:`Component.check`, run on
the typed settings before any data is loaded), and builds its
:class:`~lsc4rec.server.components.loop_hooks.LoopExtension` from a :class:`BuildContext` (or nothing when the
run does not use it).

Order: the extensions' hooks run phase by phase (:mod:`~lsc4rec.server.components.loop_hooks`), so a
checkpoint reads before every component starts and saves after every component has recorded its round,
wherever it stands here. Within a phase the hooks run in this list's order; it matters only for
``outgoing`` (MergeNet rewrites the global model before anything else looks at it) and it is the order of
the sections in a round's row. Adding a capability: its module in this folder plus one entry here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lsc4rec.data import LeaveOneOutSplit
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.server.components.catalogue_text import CatalogueText, CatalogueVectors
from lsc4rec.server.components.checkpoints import Checkpoints
from lsc4rec.server.components.cloud_candidates import CloudCandidates
from lsc4rec.server.components.cloud_llm import Cloud, start_cloud
from lsc4rec.server.components.fresh_prior import FreshPrior
from lsc4rec.server.components.fusion_weight import FusionWeight
from lsc4rec.server.components.loop_hooks import LoopExtension
from lsc4rec.server.components.mergenet_transfer import MergeNetOnServer
from lsc4rec.server.components.privacy_accounting import PrivacyAccounting
from lsc4rec.server.components.progress_file import ProgressFile
from lsc4rec.server.components.round_tracking import RoundTracking
from lsc4rec.server.components.solid_codebook import SolidOnServer
from lsc4rec.settings import FederatedRunSettings, SettingsError
from lsc4rec.strategies.loop_strategy import LoopStrategy
from lsc4rec.tracking import RunTracker, active_backends

__all__ = ["COMPONENTS", "BuildContext", "Component", "build_extensions", "check_components"]


@dataclass
class BuildContext:
    """What the components are built from: the run's settings, data, global model and strategy, and the
    parts built before the round loop (SOLID's codebook labels the warm start; the catalogue's vectors go
    into the global model)."""

    run: FederatedRunSettings
    split: LeaveOneOutSplit
    model: SequentialRecommender
    strategy: LoopStrategy
    out: Path
    catalogue: CatalogueVectors | None = None
    solid: SolidOnServer | None = None
    #: The run's tracker (the ServerApp opens and finishes it); None: the rounds are not tracked.
    tracker: RunTracker | None = None
    _cloud: Cloud | None = field(default=None, repr=False)

    def cloud(self) -> Cloud:
        """The running cloud (LLM + candidate service), started on first use and shared by the components
        that read it; the collaboration component owns it (stops it on close)."""
        if self._cloud is None:
            self._cloud = start_cloud(self.run, self.split, self.out)
        return self._cloud

    def stop_unowned_cloud(self, extensions: list[LoopExtension]) -> None:
        """A failed build: stop a cloud no built extension owns yet."""
        owned = any(isinstance(e, CloudCandidates) for e in extensions)
        if self._cloud is not None and not owned:
            self._cloud.stop()


def _no_check(run: FederatedRunSettings) -> None:
    """A component with no cross-setting rules."""


@dataclass(frozen=True)
class Component:
    """One capability of the round loop: its name, its cross-setting rules and its builder."""

    name: str
    build: Callable[[BuildContext], LoopExtension | None]
    check: Callable[[FederatedRunSettings], None] = _no_check


def _checkpoints(ctx: BuildContext) -> LoopExtension:
    federated = ctx.run.federated
    return Checkpoints(
        ctx.out / "checkpoint.pt",
        ctx.strategy,
        ctx.model.state_dict(),
        save=federated.checkpoint,
        resume=federated.resume,
    )


def _mergenet_needs_cloud(run: FederatedRunSettings) -> None:
    if run.mergenet.every_rounds > 0 and not run.collab.enabled:
        raise SettingsError(
            "mergenet.every_rounds > 0 transfers from the cloud LLM: it needs collab.enabled=true"
        )


def _mergenet(ctx: BuildContext) -> LoopExtension | None:
    if ctx.run.mergenet.every_rounds <= 0:
        return None
    # The adapter works on its own copy of the global model; the evaluation model stays untouched.
    return MergeNetOnServer(ctx.run.mergenet, copy.deepcopy(ctx.model), ctx.cloud().llm, ctx.run.seed)


def _catalogue_text(ctx: BuildContext) -> LoopExtension | None:
    if ctx.catalogue is None:
        return None
    return CatalogueText(ctx.catalogue.vectors, ctx.catalogue.compact, ctx.catalogue.report)


def _collaboration(ctx: BuildContext) -> LoopExtension | None:
    collab = ctx.run.collab
    if not collab.enabled:
        return None
    fusion = FusionWeight(collab.alpha, collab.alpha_grid)
    return CloudCandidates(ctx.cloud(), collab.srm_training == "collaborative", fusion)


def _privacy(ctx: BuildContext) -> LoopExtension | None:
    privacy = ctx.run.privacy
    return None if privacy.mode == "none" else PrivacyAccounting(privacy.mode, privacy.clipping_norm)


def _fresh_prior_needs(run: FederatedRunSettings) -> None:
    if not run.privacy.fresh_prior:
        return
    if run.federated.fraction_evaluate <= 0:
        raise SettingsError(
            "privacy.fresh_prior=true chooses its weight on the devices' validation items in the last "
            "round's evaluation: it needs federated.fraction_evaluate > 0"
        )
    if not run.eval.full_ranking:
        raise SettingsError(
            "privacy.fresh_prior=true adds a term to every item's score in full rankings: it needs "
            "eval.full_ranking=true"
        )


def _fresh_prior(ctx: BuildContext) -> LoopExtension | None:
    privacy = ctx.run.privacy
    return FreshPrior(privacy, ctx.run.federated.rounds, ctx.out) if privacy.fresh_prior else None


def _trackers_available(run: FederatedRunSettings) -> None:
    # A tracker set to true must be installed and keyed where the ServerApp runs: refused before any work.
    try:
        active_backends(run.tracking)
    except ValueError as error:
        raise SettingsError(str(error)) from None


def _tracking(ctx: BuildContext) -> LoopExtension | None:
    return None if ctx.tracker is None else RoundTracking(ctx.tracker)


#: Every component, in the order their hooks run within a phase.
COMPONENTS: tuple[Component, ...] = (
    Component("checkpoint", _checkpoints),
    Component("mergenet", _mergenet, _mergenet_needs_cloud),
    Component("item_text", _catalogue_text),
    Component("codebook", lambda ctx: ctx.solid),
    Component("collaboration", _collaboration),
    Component("progress", lambda ctx: ProgressFile(ctx.out / "metrics.json", ctx.run.record)),
    Component("privacy", _privacy),
    Component("fresh_prior", _fresh_prior, _fresh_prior_needs),
    Component("tracking", _tracking, _trackers_available),
)


def check_components(run: FederatedRunSettings) -> None:
    """Every component's cross-setting rules, before any work (a :class:`SettingsError` names the keys)."""
    for component in COMPONENTS:
        component.check(run)


def build_extensions(ctx: BuildContext) -> list[LoopExtension]:
    """The run's extensions in registry order; on a failure, what was built is closed before re-raising."""
    extensions: list[LoopExtension] = []
    try:
        for component in COMPONENTS:
            extension = component.build(ctx)
            if extension is not None:
                if extension.name != component.name:
                    raise TypeError(
                        f"component {component.name!r} built an extension named {extension.name!r}"
                    )
                extensions.append(extension)
    except BaseException:
        ctx.stop_unowned_cloud(extensions)
        for extension in extensions:
            extension.close()
        raise
    return extensions
