"""Domain errors. Only the protocols (service.api, service.api.plugin.core_problem) turn them into status codes."""

from __future__ import annotations


class InputError(ValueError):
    """The request asked for something this model cannot do (422). `field` names the request field
    when one is to blame (OpenAI's errors put it in `param`)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class QueueFullError(RuntimeError):
    """The bounded queue has no room for the request's rows (503, with Retry-After)."""


class DrainingError(RuntimeError):
    """The server is shutting down and takes no new work (503)."""


class BundleError(RuntimeError):
    """A model bundle is missing, corrupt or does not match the contract."""


class DeviceError(RuntimeError):
    """The requested execution device cannot be used."""


class InferenceTimeoutError(TimeoutError):
    """The answer took longer than REQUEST_TIMEOUT_S (504)."""


class ModelNotFoundError(LookupError):
    """The request names a model (or version) that is not loaded (404)."""


class LoadError(RuntimeError):
    """A model could not be loaded; what served before still serves (400 from the repository API)."""


class ControlError(RuntimeError):
    """A repository change that the control mode does not allow (400)."""
