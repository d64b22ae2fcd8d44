"""Writing a bundle beside its destination, and putting it in place only once it is complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh directory beside `out`; when the block completes it replaces `out`, and when the block
    raises it is removed, so that `out` never holds a partial or unverified bundle."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging)
        raise
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from a container's non-root user
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old)
