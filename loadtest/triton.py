"""Triton (PyTriton, in its own venv) serving the same bundle, for the comparison column."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtest.harness import ROOT

TRITON_VENV = ROOT / ".venv-triton"
TRITON = "Triton (PyTriton), KServe v2"


SHORT_PROMPT_TOKENS = 12
BASELINE_SERVER = [
    sys.executable,
    "-m",
    "uvicorn",
    "benchmarks.peers.baselines:app",
    "--port",
    "{port}",
    "--log-level",
    "warning",
    "--no-access-log",
]


def triton_server(bundle_dir: Path) -> tuple[list[str], dict[str, str]] | None:
    """PyTriton's command and environment, or None when its virtual environment is missing."""
    python = TRITON_VENV / "bin" / "python"
    if not python.exists():
        return None
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Triton's Python backend stub needs the interpreter's own libpython, not the one PyTriton ships.
    return (
        [str(python), "-m", "benchmarks.peers.triton_server", "--bundle", str(bundle_dir), "--http-port", "{port}"],
        {"LD_LIBRARY_PATH": libdir},
    )
