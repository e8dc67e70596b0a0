"""The cloud's candidate service: any :class:`~lsc4rec.models.llm.candidates.CandidateSource` served over
gRPC, asynchronously. It sits below the ServerApp (:mod:`lsc4rec.server` starts it for the cloud LLM) and
imports nothing from the server, client or simulation packages.

Devices (through :class:`lsc4rec.client.collab.candidate_client.CandidateServiceClient`) send interaction
histories and get the cloud model's top-``n`` candidates back. The service checks every request against the
source's catalogue and limits (``INVALID_ARGUMENT`` naming the offending field and value), can require a
bearer token and serve over TLS, micro-batches concurrent calls when asked, refuses calls beyond a bounded
queue (``RESOURCE_EXHAUSTED``), counts every call by method and status with a latency histogram
(:meth:`RunningService.metrics`, the ``Metrics`` rpc) and answers the standard ``grpc.health.v1.Health``
checks. Every refused call is logged with its reason, on the ``lsc4rec.serving`` logger.

- :mod:`~lsc4rec.serving.lifecycle`: :func:`serve`, the event-loop thread and :class:`RunningService`.
- :mod:`~lsc4rec.serving.handlers`: :class:`CandidateServicer`, one method per rpc; the user-history store.
- :mod:`~lsc4rec.serving.admission`: request checks, the service's limits and message sizes, the bound on
  calls waiting for the model, the :class:`~lsc4rec.serving.admission.Refused` error.
- :mod:`~lsc4rec.serving.micro_batching`: concurrent calls answered in batches (:class:`MicroBatcher`).
- :mod:`~lsc4rec.serving.model_runner`: the source's work in worker threads, under the model lock.
- :mod:`~lsc4rec.serving.replies`: reply messages built from the model's candidate lists and the limits.
- :mod:`~lsc4rec.serving.security`: bearer-token authentication and TLS files.
- :mod:`~lsc4rec.serving.decoding`: request bytes decoded by the service's own code (undecodable bytes:
  ``INVALID_ARGUMENT``, counted, rate-limited log lines, no traceback).

    with serve(source, token="s3cret", batch_delay=0.0) as service:
        print(service.target)   # "127.0.0.1:<bound port>"
        service.wait()          # block until stopped (Ctrl-C in a script)
"""

from lsc4rec.serving.admission import DEFAULT_MAX_BATCH, DEFAULT_MAX_N, DEFAULT_MAX_QUEUE, MAX_REQUEST_ID
from lsc4rec.serving.handlers import SERVICE_NAME, CandidateServicer
from lsc4rec.serving.lifecycle import RunningService, serve
from lsc4rec.serving.micro_batching import MicroBatcher, QueueFull
from lsc4rec.serving.security import TLSConfig, TokenAuthInterceptor

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_N",
    "DEFAULT_MAX_QUEUE",
    "MAX_REQUEST_ID",
    "SERVICE_NAME",
    "CandidateServicer",
    "MicroBatcher",
    "QueueFull",
    "RunningService",
    "TLSConfig",
    "TokenAuthInterceptor",
    "serve",
]
