"""The `attnserve` command: the console script that `pip install .` makes, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import httpx

from tests.conftest import DEFAULT_BUNDLE, ROOT, start_server

SCRIPT = Path(sys.executable).parent / "attnserve"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_the_install_makes_the_command():
    (entry,) = entry_points(group="console_scripts", name="attnserve")
    assert entry.value == "attnserve.cli:main"
    assert SCRIPT.exists()


def test_serve_flags_win_over_the_environment(toy_bundle, tmp_path):
    # The environment says the Shakespeare bundle and batches of 32; the flags say otherwise.
    server = start_server(
        DEFAULT_BUNDLE,
        tmp_path,
        command=[str(SCRIPT), "serve", "--model-dir", str(toy_bundle), "--max-batch-size", "3"],
    )
    try:
        (card,) = httpx.get(server.url + "/v1/models").json()["data"]
        assert card["id"] == "toy" and card["batching"]["max_batch_size"] == 3
        answer = httpx.post(server.url + "/v1/next-token", json={"texts": ["we do"], "top_k": 2})
        assert answer.status_code == 200 and len(answer.json()["results"][0]["top"]) == 2
    finally:
        server.stop()


def test_a_bad_flag_value_is_refused_with_the_setting_named():
    done = run("serve", "--max-batch-size", "0")
    assert done.returncode == 2 and "MAX_BATCH_SIZE" in done.stderr, done.stderr


def test_every_subcommand_has_help():
    listed = run("--help")
    assert listed.returncode == 0
    for sub in ("serve", "train", "export", "import", "bench"):
        assert sub in listed.stdout
        shown = run(sub, "--help")
        assert shown.returncode == 0 and shown.stdout.startswith("usage:"), (sub, shown.stderr)
    assert "--model-repository" in run("serve", "--help").stdout
    assert "--checkpoint" in run("export", "--help").stdout
    assert "--from" in run("import", "--help").stdout
