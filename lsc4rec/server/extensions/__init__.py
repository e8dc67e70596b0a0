"""Optional parts of the federated round loop, each plugged in through :class:`LoopExtension`.

- :mod:`~lsc4rec.server.extensions.checkpoint`: atomic checkpoints every round; resume after a crash.
- :mod:`~lsc4rec.server.extensions.cloud`: the cloud LLM's candidate service, announced to evaluating nodes.
- :mod:`~lsc4rec.server.extensions.solid`: SOLID's global codebook, synced through the round's messages.
- :mod:`~lsc4rec.server.extensions.item_text`: the catalogue's text vectors, sent once to every node.
- :mod:`~lsc4rec.server.extensions.mergenet`: MergeNet transfer cloud LLM -> global SRM every k rounds.
- :mod:`~lsc4rec.server.extensions.privacy`: the privacy spent, reported from the nodes' ledgers.
- :mod:`~lsc4rec.server.extensions.progress`: ``metrics.json`` kept current while the run goes.
"""

from lsc4rec.server.extensions.base import Best, LoopExtension, LoopState
from lsc4rec.server.extensions.checkpoint import Checkpoints
from lsc4rec.server.extensions.cloud import CloudCandidates
from lsc4rec.server.extensions.item_text import CatalogueText
from lsc4rec.server.extensions.mergenet import MergeNetOnServer
from lsc4rec.server.extensions.privacy import PrivacyAccounting
from lsc4rec.server.extensions.progress import ProgressFile
from lsc4rec.server.extensions.solid import SolidOnServer

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
    "SolidOnServer",
]
