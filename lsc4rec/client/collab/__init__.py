"""LSC4Rec on the device: the cloud's candidate lists, reranking and fusion, requests for fresh lists.

- :mod:`~lsc4rec.client.collab.candidate_client`: the gRPC client of the cloud's candidate service.
- :mod:`~lsc4rec.client.collab.inference`: SRM scores over the cloud's candidates and the catalogue.
- :mod:`~lsc4rec.client.collab.fusion`: score normalisation and the fused ranking.
- :mod:`~lsc4rec.client.collab.request_policy` / :mod:`~lsc4rec.client.collab.request_model`: when a device
  asks for a fresh list (consistency scores, the learned request model).
- :mod:`~lsc4rec.client.collab.serving`: serve a node's devices (stale list, requests within a budget, rank).
- :mod:`~lsc4rec.client.collab.rerank_training`: SRM training on the LLM's lists (collaborative training).
- :mod:`~lsc4rec.client.collab.streaming`: serve the interactions that arrive during a round (replay).

The ClientApp's handler that runs this on a node's devices is :mod:`lsc4rec.client.collaboration`; this
package imports nothing from the rest of ``lsc4rec.client``.
"""
