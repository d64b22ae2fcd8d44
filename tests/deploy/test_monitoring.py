"""Monitoring with real parts: Debian's Prometheus and promtool check and unit-test the alert rules,
and a real Prometheus scrapes the real server under load, so that every query of every dashboard
panel evaluates and returns data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port

PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "attnserve.json"
KUBE = ROOT / "deploy" / "kubernetes"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install prometheus)")
    return path


def test_the_alert_rules_pass_promtools_checks_and_unit_tests():
    promtool = _need("promtool")
    subprocess.run([promtool, "check", "rules", str(PROM / "alerts.yml")], check=True, capture_output=True)
    done = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=PROM, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    cases = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    tested = {a["alertname"] for case in cases for a in case["alert_rule_test"] if a.get("exp_alerts")}
    alerts = {r["alert"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert tested == alerts, "every alert has a unit test that fires it"


def test_the_kubernetes_component_carries_the_same_rules_and_scrapes_the_service():
    kubectl = _need("kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBE / "examples" / "monitoring")], capture_output=True, text=True, check=True
    ).stdout
    objects = {o["kind"]: o for o in yaml.safe_load_all(out) if o}
    assert objects["PrometheusRule"]["spec"] == yaml.safe_load((PROM / "alerts.yml").read_text())
    monitor, service = objects["ServiceMonitor"], objects["Service"]
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert {p["name"] for p in service["spec"]["ports"]} >= {e["port"] for e in monitor["spec"]["endpoints"]}


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def _grafana_to_promql(expr: str) -> str:
    # The dashboard's variables, as Grafana would fill them: every instance, a rate window of 15 s.
    return expr.replace("$instance", ".*").replace("$__rate_interval", "15s")


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_server_and_every_panel_and_rule_has_data(toy_bundle, server_factory, tmp_path):
    prometheus = _need("prometheus")
    server = server_factory(toy_bundle, max_batch_delay_ms=5)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROM / "alerts.yml")],
        "scrape_configs": [{"job_name": "attnserve", "static_configs": [{"targets": [server.url.split("//")[1]]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed in the finally below)
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        # Load for a while, on every kind of work: one-shot batches, attention and streamed generation.
        deadline = time.monotonic() + 12
        with httpx.Client(timeout=10) as http:
            while time.monotonic() < deadline:
                http.post(server.url + "/v1/next-token", json={"texts": ["we do like", "I do not"]})
                http.post(server.url + "/v1/attention", json={"texts": ["we do like"]})
                http.post(server.url + "/v1/score", json={"texts": ["we do like like."]})
                body = {"prompt": "I do", "max_tokens": 8, "stream": True, "n": 2}
                http.post(server.url + "/v1/completions", json=body)
                http.post(server.url + "/v1/next-token", json={"texts": [""]})  # a 422 for the status panels
        time.sleep(3)  # a last scrape after the load
        empty = []
        for title, expr in _panel_queries():
            r = httpx.get(api + "/query", params={"query": _grafana_to_promql(expr)}).json()
            assert r["status"] == "success", (title, r)
            if not r["data"]["result"]:
                empty.append(title)
        assert not empty, f"panels with no data: {empty}"
        rules = httpx.get(api + "/rules").json()["data"]["groups"][0]["rules"]
        assert len(rules) >= 6 and all(r["health"] == "ok" for r in rules), rules
    finally:
        process.terminate()
        process.wait(10)
        log.close()
