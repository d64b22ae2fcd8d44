"""The gRPC listener (grpc.aio, on the server's event loop) and the protocol plug-in that runs it.

It listens on GRPC_PORT (0: off) beside the HTTP port, on the same event loop, so that its calls
reach the same batchers as HTTP's without a hop. With WORKERS=N every worker listens on the port
(gRPC sets SO_REUSEPORT), and the kernel spreads connections over them as it does HTTP's.
Messages are bounded as HTTP bodies and answers are: a request by MAX_BODY_BYTES, an answer by
MAX_INFLIGHT_BYTES (the answer budget reserves it first and refuses what could never fit, with
RESOURCE_EXHAUSTED and a message). On shutdown the server is not ready, new model calls get
UNAVAILABLE, and calls in flight have REQUEST_TIMEOUT_S to finish.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from tritonclient.grpc import service_pb2_grpc

from service.api.kserve.routes import render_error
from service.api.kserve_grpc.servicer import InferenceService
from service.api.plugin import Protocol

log = logging.getLogger(__name__)
MAX_MESSAGE = 2**31 - 1  # gRPC's message sizes are C ints: a budget of 4 GB is at most this per message


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[None]:
    settings = app.state.settings
    if settings.grpc_port == 0:
        yield
        return
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", min(settings.max_body_bytes, MAX_MESSAGE)),
            # Past the answer budget a call is refused before it runs; this is the last guard.
            ("grpc.max_send_message_length", min(settings.max_inflight_bytes, MAX_MESSAGE)),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(app.state), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # an IPv6 address
    address = f"{host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address} (GRPC_PORT)")
    await server.start()
    log.info("KServe v2 over gRPC on %s", address)
    try:
        yield
    finally:
        # Calls in flight finish (up to the request timeout); new ones are refused by the server.
        await server.stop(grace=settings.request_timeout_s)


protocol = Protocol("kserve_grpc", [], render_error, serve=serve)
