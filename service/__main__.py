"""Start the server: python -m service (settings from the environment, docs/operations.md)."""

import sys

from service.server.main import main

if __name__ == "__main__":
    sys.exit(main())
