"""Start the server: python -m service (settings from the environment, see the README)."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError
from starlette.datastructures import State

from service.app import create_app
from service.core.bundle import load_bundle
from service.core.engine import choose_providers
from service.core.errors import BundleError, DeviceError
from service.settings import Settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """Flips readiness to 503 the moment SIGTERM/SIGINT arrives, before uvicorn starts draining."""

    def __init__(self, config: uvicorn.Config, state: State) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: object) -> None:
        self.state.draining = True
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in e.errors())
        print(f"attnserve: invalid settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        bundle = load_bundle(settings.model_dir)
        choose_providers(settings.device)
    except (BundleError, DeviceError) as e:
        log.error("cannot start: %s", e)
        return 2
    app = create_app(settings, bundle)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # the middleware counts every request in /metrics; logs them at debug level
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    DrainingServer(config, app.state).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
