"""A model repository on disk, Triton's layout: `<repository>/<name>/<version>/manifest.json`.

The served name is the model directory's name; versions are positive integers, and the highest
serves. What is read here is what the registry (service.core.registry) loads, polls and reports.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bundlespec import MANIFEST_FILE, ONE_SHOT

# v2 names a model's job "<model>.<job>" and the default model's jobs by the bare job name: a model
# named like a job, or with a dot in its name, would be reached by another model's requests.
JOB_NAMES = frozenset(ONE_SHOT)


def scan(repository: Path) -> dict[str, dict[str, Path]]:
    """{name: {version: path}} for every `<name>/<version>/` that holds a manifest; versions are
    positive integers (other directories are skipped, as Triton skips them)."""
    models: dict[str, dict[str, Path]] = {}
    if not repository.is_dir():
        return models
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = {v.name: v for v in model_dir.iterdir() if _is_version(v)}
        if versions:
            models[model_dir.name] = versions
    return models


def name_problem(name: str) -> str | None:
    """Why a model cannot be served under this name, or None when it can."""
    if "." in name:
        return f"the model name {name!r} has a dot, which v2 reads as <model>.<job>; rename its directory"
    if name in JOB_NAMES:
        return f"the model name {name!r} is the name of a job ({', '.join(sorted(JOB_NAMES))}); rename its directory"
    return None


def fingerprint(path: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What a version directory holds, by file name, inode, size and modification time: a version
    that failed is tried again once this changes (fixed in place, replaced, or finished copying)."""
    with contextlib.suppress(OSError):
        return tuple(
            (f.name, st.st_ino, st.st_size, st.st_mtime_ns) for f in sorted(path.iterdir()) for st in (f.stat(),)
        )
    return ()


def _is_version(path: Path) -> bool:
    name = path.name
    return path.is_dir() and name.isascii() and name.isdigit() and int(name) > 0 and (path / MANIFEST_FILE).is_file()


def highest(versions: dict[str, Path]) -> str:
    # A repository's versions are integers; a single bundle's one version is its manifest's string.
    return max(versions, key=version_order)


def version_order(version: str) -> tuple[bool, int]:
    number = version.isascii() and version.isdigit()
    return number, int(version) if number else 0
