"""WORKERS=N: several server processes on one port, supervised, with gathered metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT


def _worker_pids(server) -> list[int]:
    found = re.search(r"supervising \d+ workers on port \d+ \(pids \[([\d, ]+)\]\)", server.log())
    assert found, server.log()
    return [int(p) for p in found.group(1).split(",")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _requests_by_worker(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        if family.name == "attnserve_requests":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels["route"] == "/v1/next-token":
                    counts[s.labels["worker"]] = counts.get(s.labels["worker"], 0) + s.value
    return counts


def test_two_workers_share_the_port_report_together_and_drain_together(toy_bundle, server_factory):
    server = server_factory(toy_bundle, workers=2, drain_delay_s=0)
    pids = _worker_pids(server)
    deadline = time.monotonic() + 30
    body = {"texts": ["we do"], "top_k": 3}
    answers = set()
    # Each request on a new connection: the kernel spreads connections, not requests.
    while time.monotonic() < deadline:
        r = httpx.post(server.url + "/v1/next-token", json=body)
        assert r.status_code == 200
        answers.add(str(r.json()["results"]))
        time.sleep(0.02)
        if len(_requests_by_worker(server.url)) == 2:
            break
    time.sleep(1.5)  # each worker writes its metrics every second: any worker now answers for both
    counts = _requests_by_worker(server.url)
    assert set(counts) == {"0", "1"} and all(v > 0 for v in counts.values()), counts
    assert len(answers) == 1, "every worker serves the same model"
    assert server.stop(signal.SIGTERM) == 0
    assert not any(_alive(p) for p in pids)


def test_a_worker_that_dies_stops_the_others(toy_bundle, server_factory):
    server = server_factory(toy_bundle, workers=2, drain_delay_s=0)
    first, second = _worker_pids(server)
    os.kill(first, signal.SIGKILL)
    assert server.process.wait(30) != 0, "the supervisor exits with an error"
    time.sleep(0.5)
    assert not _alive(second)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKERS": "0"}, "WORKERS"),
        ({"WORKERS": "2", "MODEL_CONTROL_MODE": "explicit"}, "WORKERS=2 with MODEL_CONTROL_MODE=explicit"),
    ],
)
def test_workers_below_one_or_with_explicit_control_are_refused_at_start(toy_bundle, env, message):
    environ = {**os.environ, "MODEL_DIR": str(toy_bundle), "HOST": "127.0.0.1", "PORT": "1", **env}
    done = subprocess.run([sys.executable, "-m", "service"], env=environ, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert message in done.stderr
