"""The federated round loop's components, each plugged in through :class:`LoopExtension`.

:mod:`~lsc4rec.server.components.registry` lists them, with their cross-setting rules and their order.

- :mod:`~lsc4rec.server.components.loop_hooks`: the hooks every component may implement, the loop's state.
- :mod:`~lsc4rec.server.components.checkpoints` (files: :mod:`~lsc4rec.server.components.checkpoint_files`):
  atomic checkpoints every round; resume after a crash.
- :mod:`~lsc4rec.server.components.cloud_candidates`: the cloud LLM's candidate service, announced to nodes
  (the cloud itself: :mod:`~lsc4rec.server.components.cloud_llm`; the fusion weight chosen on the round's
  arrivals: :mod:`~lsc4rec.server.components.fusion_weight`).
- :mod:`~lsc4rec.server.components.solid_codebook`: SOLID's global codebook, synced through the round's
  messages (the protocol: :mod:`~lsc4rec.server.components.global_codebook`).
- :mod:`~lsc4rec.server.components.catalogue_text`: the catalogue's text vectors, sent once to every node.
- :mod:`~lsc4rec.server.components.mergenet_transfer`: MergeNet transfer cloud LLM -> global SRM every k
  rounds.
- :mod:`~lsc4rec.server.components.privacy_accounting`: the privacy spent, reported from the nodes' ledgers.
- :mod:`~lsc4rec.server.components.progress_file`: ``metrics.json`` kept current while the run goes.
- :mod:`~lsc4rec.server.components.round_tracking`: each round's row to the run's trackers (TensorBoard, ...).
"""

from lsc4rec.server.components.catalogue_text import CatalogueText
from lsc4rec.server.components.checkpoints import Checkpoints
from lsc4rec.server.components.cloud_candidates import CloudCandidates
from lsc4rec.server.components.loop_hooks import Best, LoopExtension, LoopState
from lsc4rec.server.components.mergenet_transfer import MergeNetOnServer
from lsc4rec.server.components.privacy_accounting import PrivacyAccounting
from lsc4rec.server.components.progress_file import ProgressFile
from lsc4rec.server.components.round_tracking import RoundTracking
from lsc4rec.server.components.solid_codebook import SolidOnServer

__all__ = [
    "Best",
    "CatalogueText",
    "Checkpoints",
    "CloudCandidates",
    "LoopExtension",
    "LoopState",
    "MergeNetOnServer",
    "PrivacyAccounting",
    "ProgressFile",
    "RoundTracking",
    "SolidOnServer",
]
