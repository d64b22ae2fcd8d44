"""The Dockerfile passes hadolint at error level, and the compose file parses as Compose."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def test_dockerfile_has_no_hadolint_errors():
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "error", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec():
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
