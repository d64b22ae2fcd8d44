"""The server's entry point (python -m service, attnserve serve): settings from the environment."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn
from pydantic import ValidationError
from starlette.datastructures import State

from service.api.problems import summary
from service.core.bundle import load_bundle
from service.core.errors import BundleError, DeviceError
from service.core.runner import choose_providers
from service.server.app import create_app
from service.server.connection import guarded_protocol
from service.server.logs import setup_logging
from service.server.settings import Settings, repository_problem
from service.server.tracing import TracingConfigError, exporter_protocol, tracing_wanted
from service.server.workers import reuse_port_socket, supervise, worker_index

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """SIGTERM/SIGINT: readiness turns 503 at once; the server keeps accepting and serving for
    DRAIN_DELAY_S (so that load balancers see it leave before its listener closes), then stops
    accepting and finishes in-flight work. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, state: State, drain_delay_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_delay_s = drain_delay_s

    def handle_exit(self, sig: int, frame: object) -> None:
        if self.state.stopping or self.drain_delay_s <= 0:
            self._stop(sig, frame)
            return
        self.state.stopping = True
        log.info("draining: not ready, serving for %.3g s more before the listener closes", self.drain_delay_s)
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(loop.call_later, self.drain_delay_s, self._stop, sig, frame)

    def _stop(self, sig: int, frame: object) -> None:
        self.state.stopping = True
        self.state.draining = True
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def main() -> int:
    try:
        settings = Settings()
        if tracing_wanted():
            exporter_protocol()
        problem = repository_problem(settings)
    except ValidationError as e:
        problem = summary(e.errors(), limit=50, upper=True)
    except TracingConfigError as e:
        problem = str(e)
    if problem is not None:
        print(f"attnserve: invalid settings: {problem}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        # One bundle was asked for: a bad one stops the start, with why (and a good one loads as it is).
        checked = load_bundle(settings.model_dir) if settings.model_dir is not None else None
        choose_providers(settings.device)
    except BundleError as e:
        log.error("cannot start: %s (MODEL_DIR must point at a model bundle)", e)
        return 2
    except DeviceError as e:
        log.error("cannot start: %s", e)
        return 2
    if settings.workers > 1 and worker_index() is None:
        return supervise(settings)
    app = create_app(settings, checked=checked)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings, app.state.metrics.connection_event),
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through service.server.logs, in LOG_FORMAT
        access_log=False,  # the middleware writes the access lines, with the request id, model and rows
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    # A worker listens on its own socket, bound to the shared port with SO_REUSEPORT.
    sockets = [reuse_port_socket(settings.host, settings.port)] if worker_index() is not None else None
    DrainingServer(config, app.state, settings.drain_delay_s).run(sockets=sockets)
    return 0
