"""The Dockerfile passes hadolint at error level, and the compose file parses as Compose and passes every setting."""

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


# Settings whose container default differs from the service's, on purpose.
CONTAINER_DEFAULTS = {
    "MODEL_REPOSITORY": "/app/bundles",  # the image's own path
    "LOG_FORMAT": "json",  # containers log for a pipeline; a terminal gets text
}


def test_compose_passes_every_setting_on_with_the_services_own_default():
    import re

    import yaml

    from service.server.settings import Settings

    settings = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-settings"]
    assert set(settings) == {name.upper() for name in Settings.model_fields} - {"HOST", "PORT", "GRPC_PORT"}
    defaults = Settings()
    for name, value in settings.items():
        default = re.fullmatch(r"\$\{(\w+):-(.*)\}", value)
        assert default and default.group(1) == name, value
        if name not in CONTAINER_DEFAULTS:
            parsed = Settings(**{name.lower(): default.group(2)})
            assert getattr(parsed, name.lower()) == getattr(defaults, name.lower()), name


def test_the_operations_page_documents_every_setting():
    from service.server.settings import Settings

    readme = (ROOT / "docs" / "operations.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert missing == []


def test_the_lock_files_pin_every_dependency_with_hashes():
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def pinned(lock: str) -> dict[str, str]:
        text = (ROOT / "requirements" / lock).read_text()
        pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", text, re.M))
        assert text.count("--hash=sha256:") >= len(pins) > 0, lock
        return {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}

    def names(requirements: list[str]) -> set[str]:
        return {re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=;!~]", r, maxsplit=1)[0]).lower() for r in requirements}

    serve = pinned("serve.txt")
    assert names(project["dependencies"]) <= set(serve)
    # torch and transformers are export-time tools: the serving install has neither.
    assert not {"torch", "transformers"} & (set(serve) | set(pinned("image-cpu.txt")) | set(pinned("image-gpu.txt")))
    dev = pinned("dev.txt")
    extras = [r for group in ("train", "test", "loadtest") for r in project["optional-dependencies"][group]]
    assert names(extras) - {"torch"} <= set(dev) and "torch" not in dev  # torch comes first, on its own
    assert "onnxruntime" in pinned("image-cpu.txt") and "onnxruntime-gpu" not in pinned("image-cpu.txt")
    assert "onnxruntime-gpu" in pinned("image-gpu.txt")


def test_the_readme_states_the_committed_bundles_size():
    import re

    bundle = ROOT / "bundles" / "attnserve-shakespeare" / "1"
    size_mb = sum(f.stat().st_size for f in bundle.iterdir()) / 1e6
    stated = re.search(r"`bundles/attnserve-shakespeare/1/`, ([0-9.]+) MB", (ROOT / "docs" / "model.md").read_text())
    assert stated and abs(float(stated.group(1)) - size_mb) < 0.06, (stated and stated.group(1), size_mb)
