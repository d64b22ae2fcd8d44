"""Podman set-up for the container tests: the configuration this machine needs, and local
stand-ins for the base images (no registry can be reached here, so nothing can be pulled)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = "python3,python3-venv,ca-certificates,nginx-light"
# The names the Dockerfile and the compose file use; podman finds these locally and pulls nothing.
STAND_IN_TAGS = ("docker.io/library/python:3.11-slim-bookworm", "docker.io/library/nginx:1.27-bookworm")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_CACHE = Path(os.environ.get("ATTNSERVE_BASE_CACHE", "/var/tmp/attnserve-base"))

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def available() -> str | None:
    """Why podman cannot run here, or None when it can."""
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install podman runc debootstrap)"
    if os.geteuid() != 0:
        return "the container tests run podman as root"
    return None


def environment(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "containers.conf").write_text(CONTAINERS_CONF)
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\nrunroot = "{root}/run"\ngraphroot = "{root}/graph"\n'
    )
    return {
        **os.environ,
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
    }


def podman(env: dict[str, str], *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def base_tarball() -> Path:
    """A Debian bookworm root filesystem with Python 3.11 and nginx, cached between runs."""
    key = hashlib.sha256(f"{SUITE} {PACKAGES} {MIRROR}".encode()).hexdigest()[:12]
    tarball = BASE_CACHE / f"base-{key}.tar"
    if tarball.exists():
        return tarball
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = BASE_CACHE / f"rootfs-{key}"
    shutil.rmtree(rootfs, ignore_errors=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(rootfs), MIRROR],
        check=True,
        capture_output=True,
        timeout=900,
    )
    # Stand in for the official python image: `python` on PATH, pip able to reach PyPI through the
    # host's certificate authorities.
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    shutil.copy(HOST_CA, rootfs / "etc/ssl/certs/ca-certificates.crt")
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    partial = tarball.with_suffix(".part")
    with tarfile.open(partial, "w") as tar:
        tar.add(rootfs, arcname=".")
    partial.rename(tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def import_base(env: dict[str, str]) -> None:
    ca = "/etc/ssl/certs/ca-certificates.crt"
    changes = [
        "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin",
        f"ENV PIP_CERT={ca}",
        f"ENV SSL_CERT_FILE={ca}",
        'CMD ["python3"]',
    ]
    args = ["import"]
    for change in changes:
        args += ["--change", change]
    podman(env, *args, str(base_tarball()), STAND_IN_TAGS[0])
    for tag in STAND_IN_TAGS[1:]:
        podman(env, "tag", STAND_IN_TAGS[0], tag)
