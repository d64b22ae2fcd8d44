"""The GPU command (python -m benchmarks --gpu) between lent GPUs: it refuses to measure without
CUDA, and its measurements run, on the CPU and in seconds, so that the command works when a GPU comes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import DEFAULT_BUNDLE, GPU, ROOT


@pytest.mark.skipif(GPU, reason="this machine has a GPU: the command would measure it")
def test_without_cuda_the_command_stops_and_says_why():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--gpu"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2 and "CUDA cannot be used" in out.stderr


def test_every_measurement_runs_on_the_cpu_in_its_quick_form(tmp_path):
    from benchmarks.gpu import gpu_bench, gpu_report

    result = gpu_bench(DEFAULT_BUNDLE, tmp_path, device="cpu", quick=True)
    assert set(result["providers"].values()) == {"CPUExecutionProvider"}
    assert result["max_logprob_diff_vs_cpu"] == 0.0
    assert result["one_shot"][0]["next_token_ms"] > 0 and result["generation"][0]["tokens_per_s"] > 0
    assert result["int8"]["int8"]["next_token_32x64_ms"] > 0
    report = "\n".join(gpu_report({"gpu": result}))
    assert "## On a GPU: cpu" in report and "| 1 x 64 |" in report
