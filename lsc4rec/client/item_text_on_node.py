"""The catalogue's text on a node: the vectors arrive once (:func:`lsc4rec.client.node.device_item_text`,
read before the model is built, which carries them) and every reply says which version the node holds, so
the server sends them again only to a node that lacks them."""

from __future__ import annotations

from flwr.app import RecordDict

from lsc4rec.client.node_component import NodeComponent, NodeStep
from lsc4rec.messages import ITEM_TEXT_VERSION, METRICS

__all__ = ["ItemTextOnNode"]


class ItemTextOnNode(NodeComponent):
    """Reports the version of the catalogue's text vectors the node holds."""

    name = "item_text"

    def reply(self, step: NodeStep, content: RecordDict) -> None:
        """The version of the vectors this instruction used, when the server announced any."""
        if step.item_text is not None:
            content[METRICS][ITEM_TEXT_VERSION] = step.item_text[1]
