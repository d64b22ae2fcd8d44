"""python -m attnserve: the same as the `attnserve` command."""

import sys

from attnserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
