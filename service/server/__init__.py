"""The server floor: the app and its lifespan, settings, middleware, the connection layer and metrics.
It sits above the protocols (service.api) and the core (service.core); neither imports it."""
