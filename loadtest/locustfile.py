"""Locust load test for attnserve: a weighted mix of the three endpoints.

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 -u 32 -r 8 -t 1m

Weights come from the environment, so a run can change the mix without editing this file:
ATTNSERVE_WEIGHT_NEXT_TOKEN (default 6), ATTNSERVE_WEIGHT_SCORE (3), ATTNSERVE_WEIGHT_ATTENTION (1).
"""

from __future__ import annotations

import os
import random
import time
import urllib.request

from locust import FastHttpUser, between, events, task

from loadtest.workload import ENDPOINTS, load_prompts, request_body

PROMPTS = load_prompts()
READY_TIMEOUT_S = float(os.environ.get("ATTNSERVE_READY_TIMEOUT_S", "180"))


@events.test_start.add_listener
def wait_until_ready(environment, **_kwargs) -> None:
    """Hold the users back until /readyz says 200, so a run started beside a booting server (the
    compose loadtest profile) measures the model, not connection errors."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{environment.host}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{environment.host} was not ready within {READY_TIMEOUT_S:g} s")


def weight(name: str, default: int) -> int:
    return int(os.environ.get(f"ATTNSERVE_WEIGHT_{name}", default))


class AttnserveUser(FastHttpUser):
    wait_time = between(0.0, 0.05)

    def _post(self, endpoint: str) -> None:
        body = request_body(endpoint, random.choice(PROMPTS))
        with self.client.post(ENDPOINTS[endpoint], json=body, name=endpoint, catch_response=True) as r:
            if r.status_code == 200 and not r.json().get("results"):
                r.failure("200 without results")

    @task(weight("NEXT_TOKEN", 6))
    def next_token(self) -> None:
        self._post("next-token")

    @task(weight("SCORE", 3))
    def score(self) -> None:
        self._post("score")

    @task(weight("ATTENTION", 1))
    def attention(self) -> None:
        self._post("attention")
