"""The training command, end to end on a small slice of the real corpus."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.data import CorpusError, fetch_corpus, split_text
from tests.conftest import ROOT

CORPUS = Path(os.environ.get("CORPUS", ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))


def run_model_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model", "--no-progress", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(not CORPUS.is_file(), reason=f"corpus not found at {CORPUS} (set CORPUS)")
def test_training_on_a_slice_lowers_the_loss_and_writes_its_outputs(tmp_path):
    out = tmp_path / "run"
    result = run_model_cli(
        "--corpus",
        str(CORPUS),
        "--corpus-chars",
        "60000",
        "--out",
        str(out),
        "--vocab-size",
        "300",
        "--n-layer",
        "1",
        "--d-model",
        "64",
        "--n-head",
        "4",
        "--context-length",
        "64",
        "--seq-len",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "60",
        "--warmup-steps",
        "5",
        "--lr",
        "0.005",
        "--eval-every",
        "30",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    losses = metrics["history"]["train_loss"]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    assert metrics["val_nats_per_char"] < metrics["history"]["val_nats_per_char"][0] + 1e-9
    assert metrics["bigram_val_nats_per_char"] > 0
    assert (out / "checkpoint.pt").stat().st_size > 0
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_a_missing_corpus_is_one_clear_line(tmp_path):
    result = run_model_cli("--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "corpus file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_wrong_corpus_is_refused_by_its_hash(tmp_path):
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not shakespeare")
    with pytest.raises(CorpusError, match="sha256"):
        fetch_corpus(str(wrong), tmp_path)


def test_split_keeps_validation_apart():
    split = split_text("a" * 90 + "b" * 10)
    assert split.train == "a" * 90 and split.val == "b" * 10
