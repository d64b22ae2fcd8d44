"""The servers the HTTP benchmark compares the service with: they import what they need (PyTorch, PyTriton),
which loadtest/, an HTTP client of the servers, never does."""
