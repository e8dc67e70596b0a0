"""The node side of the federated run's components, in the order their hooks run
(:mod:`lsc4rec.client.node_component` says what each hook does).

Each entry carries the name of its server side in :data:`lsc4rec.server.components.registry.COMPONENTS`
(a test holds the two lists to the same names); a capability without node work (checkpoints, MergeNet, the
progress file, tracking) has no entry here. The node's saved state across restarts is a Flower mod
(:mod:`lsc4rec.client.node_state`) around both handlers; the fault drills are another
(:mod:`lsc4rec.client.fault_drills`). Adding a capability's node side: its class in its own module plus one
entry here.
"""

from __future__ import annotations

from lsc4rec.client.codebook_sync import CodebookOnNode
from lsc4rec.client.collaboration import CollaborationOnNode
from lsc4rec.client.fresh_prior_on_node import FreshPriorOnNode
from lsc4rec.client.item_text_on_node import ItemTextOnNode
from lsc4rec.client.node_component import NodeComponent
from lsc4rec.client.privacy_on_node import PrivacyOnNode
from lsc4rec.settings import FederatedRunSettings

__all__ = ["NODE_COMPONENTS", "active_node_components"]

#: Every node-side component, in the order their hooks run: the catalogue's text and SOLID's codebook are in
#: place before the cloud's lists train the model, and local DP runs the local epochs last.
NODE_COMPONENTS: tuple[NodeComponent, ...] = (
    ItemTextOnNode(),
    CodebookOnNode(),
    CollaborationOnNode(),
    PrivacyOnNode(),
    FreshPriorOnNode(),
)


def active_node_components(run: FederatedRunSettings) -> list[NodeComponent]:
    """The components this run uses, in registry order."""
    return [component for component in NODE_COMPONENTS if component.active(run)]
