"""Flower client mods for privacy: the update clipping that central DP with client-side clipping needs."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from lsc4rec.messages import ADAPTIVE_CLIPPING


def central_dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this node's update to the server's norm when the server asks (central DP, client-side clipping).

    The server's ``DifferentialPrivacyClientSideFixedClipping`` puts the clipping norm in the train config;
    then Flower's ``fixedclipping_mod`` clips ``reply - received`` before it leaves the node, so the server
    never sees an unclipped update. With adaptive clipping (the server marks the config) Flower's
    ``adaptiveclipping_mod`` clips the same way and also reports whether it clipped, for the server's noised
    count. Every other message passes through untouched.
    """
    config = msg.content.config_records.get("config")
    if config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    if config.get(ADAPTIVE_CLIPPING):
        return adaptiveclipping_mod(msg, context, call_next)
    return fixedclipping_mod(msg, context, call_next)
