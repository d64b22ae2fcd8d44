"""The load-testing tools against the real server."""

import json
import shutil
import subprocess
import sys

import pytest

from loadtest.workload import load_prompts
from tests.conftest import ROOT


def test_prompts_cover_short_and_long_inputs():
    lengths = sorted(len(p) for p in load_prompts())
    assert len(lengths) >= 20 and lengths[0] < 20 and lengths[-1] > 400


def run_loadtest(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", "--url", url, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("endpoint", ["next-token", "attention", "score"])
def test_closed_loop_client_reports_throughput_latency_and_statuses(toy_server, tmp_path, endpoint):
    out = tmp_path / "result.json"
    result = run_loadtest(
        toy_server.url,
        "--endpoint",
        endpoint,
        "--concurrency",
        "4",
        "--duration",
        "1.5",
        "--warmup",
        "0.2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok/s" in result.stdout and "p99=" in result.stdout
    summary = json.loads(out.read_text())
    assert summary["requests"] > 10 and summary["status_counts"] == {"200": summary["requests"]}
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]


def test_closed_loop_client_counts_errors_by_status(toy_server, tmp_path):
    result = run_loadtest(
        toy_server.url, "--path", "/nowhere", "--concurrency", "2", "--requests", "20", "--warmup", "0"
    )
    assert result.returncode == 1 and "'404': 20" in result.stdout


def test_locust_file_runs_headless_without_failures(toy_server, tmp_path):
    locust = shutil.which("locust") or str(ROOT / ".venv" / "bin" / "locust")
    result = subprocess.run(
        [
            locust,
            "-f",
            str(ROOT / "loadtest" / "locustfile.py"),
            "--headless",
            "--host",
            toy_server.url,
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "4s",
            "--csv",
            str(tmp_path / "run"),
            "--only-summary",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stats = (tmp_path / "run_stats.csv").read_text().splitlines()
    rows = {line.split(",")[1]: line.split(",") for line in stats[1:]}
    assert int(rows["Aggregated"][2]) > 10  # request count
    assert int(rows["Aggregated"][3]) == 0  # failure count
    assert {"next-token", "score"} <= set(rows)
