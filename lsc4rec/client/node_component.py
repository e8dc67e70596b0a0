"""What a capability does on a node: the hooks of the ClientApp's handlers, each a no-op by default.

The node's side of a component (SOLID's codebook, the cloud collaboration, the catalogue's text, local DP)
subclasses :class:`NodeComponent`; :mod:`lsc4rec.client.node_registry` lists them under the names of their
server-side components (:mod:`lsc4rec.server.components.registry`). The handlers in
:mod:`lsc4rec.client.client_app` call the hooks of the active components in registry order:

1. :meth:`~NodeComponent.prepare` after the global model is loaded (train and evaluate): bring the node's
   copy of the component's state up to date and install it in the model (SOLID's semantic ids).
2. :meth:`~NodeComponent.before_update` (train): training before the local epochs (the pass over the cloud's
   lists); returns metrics for the reply.
3. :meth:`~NodeComponent.local_update` (train): the first component that returns metrics instead of None has
   run the round's local epochs itself (DP-SGD); else the handler runs the standard update.
4. :meth:`~NodeComponent.reply` (train and evaluate): what the component adds to the reply (statistics,
   versions the node holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from flwr.app import Context, Message, RecordDict

from lsc4rec.client.shard import DeviceShard
from lsc4rec.codebook import SemanticCodebook
from lsc4rec.models.srm import SequentialRecommender
from lsc4rec.settings import FederatedRunSettings
from lsc4rec.training import TrainSettings

__all__ = ["NodeComponent", "NodeStep"]


@dataclass
class NodeStep:
    """What one instruction gives a node's components: the message, the node's context and settings, its
    devices' data, the global model (loaded), the catalogue's text vectors and their version when the server
    sent them, and what the components set (SOLID's codebook)."""

    msg: Message
    context: Context
    run: FederatedRunSettings
    shard: DeviceShard
    model: SequentialRecommender
    #: True for a training instruction, False for an evaluation (a round's devices' side or the test).
    training: bool
    #: The round the instruction belongs to (None: the run's final test).
    server_round: int | None
    item_text: tuple[torch.Tensor, int] | None = None
    codebook: SemanticCodebook | None = None
    #: Anything a component keeps for its later hooks within this instruction.
    scratch: dict[str, object] = field(default_factory=dict)


class NodeComponent:
    """The node side of one capability; every hook does nothing unless the component overrides it."""

    #: The name of the component, the same as its server side's in the server's registry.
    name: str = ""

    def active(self, run: FederatedRunSettings) -> bool:
        """Whether this run uses the component (an inactive one's hooks are not called)."""
        return True

    def prepare(self, step: NodeStep) -> None:
        """Bring the component's state up to date and install it in ``step.model`` before anything runs."""

    def before_update(self, step: NodeStep, settings: TrainSettings) -> dict[str, float]:
        """Training before the round's local epochs; returns its metrics (none by default)."""
        return {}

    def local_update(self, step: NodeStep, settings: TrainSettings, mu: float) -> dict[str, float] | None:
        """Run the round's local epochs instead of the standard update and return their metrics; None: the
        component does not train (the default)."""
        return None

    def reply(self, step: NodeStep, content: RecordDict) -> None:
        """Add what the server's side of the component reads to the reply's ``content``."""
