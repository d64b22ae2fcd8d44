"""Property-based API testing against the live OpenAPI document, with every check schemathesis has
(schemathesis.toml): a schema-valid request must be taken, a schema-invalid one refused, and every
answer must match the document."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_schemathesis_every_check_passes(toy_server, toy_bundle):
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    result = subprocess.run(
        [
            cli,
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{toy_server.url}/openapi.json",
            "--max-examples",
            "100",
            "--seed",
            "7",
            "--generation-database",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE,  # the hooks module is imported from here
        env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "ATTNSERVE_BUNDLE": str(toy_bundle)},
    )
    assert result.returncode == 0, result.stdout[-5000:]
    assert " passed" in result.stdout and "failed" not in result.stdout, result.stdout[-5000:]
    # The document says what the streamed completions answer is.
    assert (
        "text/event-stream"
        in subprocess.run(
            ["curl", "-s", f"{toy_server.url}/openapi.json"], capture_output=True, text=True, check=True
        ).stdout
    )
