"""GPT-2 small's shapes, served: a seeded random GPT2LMHeadModel(GPT2Config()) (12 layers, 12 heads,
width 768, context 1024) with a byte-level BPE trained here, saved as a user's checkpoint would be,
imported (export/hf_import.py) and measured through HTTP. No weights can be downloaded here, so the
numbers are about shapes, not about what the model says."""

from __future__ import annotations

import concurrent.futures
import logging
import statistics
import sys
import time
from pathlib import Path

from loadtest.harness import Server
from loadtest.workload import load_prompts

log = logging.getLogger("bench")

ROWS, TOKENS, STREAMS = (1, 8, 32), (64, 256, 1024), (1, 8, 32)


def build_checkpoint(directory: Path, corpus: str | None) -> int:
    """The checkpoint; returns its vocabulary size (the trained tokenizer's, at most GPT-2's 50257)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    text = Path(corpus).read_text(encoding="utf-8") if corpus and Path(corpus).is_file() else "\n".join(load_prompts())
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=50257, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text], trainer)
    torch.manual_seed(0)
    vocab = tokenizer.get_vocab_size()
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab, bos_token_id=None, eos_token_id=None)).save_pretrained(directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    return vocab


def memory_rollup(pid: int) -> dict[str, int]:
    """The process's memory from /proc: RSS counts every mapped page it touched, a file mapped by ten
    sessions once per mapping's use; PSS splits shared pages between their users; anonymous memory is
    the heap and the arenas, without the mapped weights."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "anonymous": fields["Anonymous"]}


def gpt2_small_bench(work: Path, corpus: str | None) -> dict:
    import httpx
    import numpy as np

    from export.hf_import import import_checkpoint

    source, repository = work / "gpt2-small", work / "repository"
    vocab = build_checkpoint(source, corpus)
    started = time.perf_counter()
    parity = import_checkpoint(source, repository / "gpt2-small" / "1", "gpt2-small", "1")
    out: dict = {"vocab": vocab, "import_s": time.perf_counter() - started, "transformers_parity": parity}
    out["bundle_bytes"] = sum(f.stat().st_size for f in (repository / "gpt2-small" / "1").iterdir())
    log.info("gpt2-small: imported in %.0f s", out["import_s"])
    env = {
        "MODEL_REPOSITORY": str(repository),
        "DEFAULT_MODEL": "gpt2-small",
        "DEVICE": "cpu",
        "LOG_LEVEL": "warning",
        # A 32 x 1024-token batch of a 124M-parameter model takes tens of seconds on two cores.
        "REQUEST_TIMEOUT_S": "600",
        # All 144 maps of 1024 tokens, and one layer's 12 while each runs: beyond the defaults, which
        # take one head at 1024 tokens (13 maps held) and not all of them.
        "MAX_ATTENTION_COMPUTE": "170000000",
        "MAX_ATTENTION_VALUES": "160000000",
        "MAX_INFLIGHT_BYTES": "4000000000",
    }
    server = Server("gpt2-small", [sys.executable, "-m", "service"], env, work)
    started = time.perf_counter()
    try:
        server.wait_ready("/readyz", timeout=600)
        out["load_s"] = time.perf_counter() - started
        with httpx.Client(base_url=server.url, timeout=900) as http:
            card = http.get("/v1/models").json()["data"][0]
            out["resident_bytes"] = card["resident_bytes"]
            out["memory"] = memory_rollup(server.process.pid)
            rng = np.random.default_rng(0)
            out["next_token"] = []
            for tokens in TOKENS:
                for rows in ROWS:
                    ids = rng.integers(0, vocab, (rows, tokens)).tolist()
                    started = time.perf_counter()
                    http.post("/v1/next-token", json={"token_ids": ids, "top_k": 1}).raise_for_status()
                    ms = (time.perf_counter() - started) * 1000
                    out["next_token"].append({"rows": rows, "tokens": tokens, "ms": ms})
                    log.info("gpt2-small next-token %d x %d: %.0f ms", rows, tokens, ms)
            out["generation"] = {}
            body = {"prompt": "ROMEO:", "max_tokens": 64, "temperature": 0, "ignore_eos": True}
            for streams in STREAMS:
                started = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(streams) as pool:
                    answers = list(pool.map(lambda _: http.post("/v1/completions", json=body), range(streams)))
                elapsed = time.perf_counter() - started
                tokens = sum(a.raise_for_status().json()["usage"]["completion_tokens"] for a in answers)
                out["generation"][str(streams)] = tokens / elapsed
                log.info("gpt2-small generation at %d streams: %.0f tokens/s", streams, tokens / elapsed)
            long_ids = [rng.integers(0, vocab, 1024).tolist()]
            out["attention"] = {}
            v2 = {
                "inputs": [{"name": "input_ids", "shape": [1, 1024], "datatype": "INT64", "data": long_ids}],
                "outputs": [{"name": "attention_weights", "parameters": {"binary_data": True}}],
            }
            for label, (path, body) in {
                "one head, native JSON": ("/v1/attention", {"token_ids": long_ids, "layers": [0], "heads": [0]}),
                "all 144 heads, v2 binary": ("/v2/models/gpt2-small.attention/infer", v2),
            }.items():
                times = []
                for _ in range(2):
                    started = time.perf_counter()
                    r = http.post(path, json=body)
                    times.append((time.perf_counter() - started) * 1000)
                out["attention"][label] = {
                    "ms": statistics.median(times),
                    "status": r.status_code,
                    "bytes": len(r.content),
                }
                log.info("gpt2-small attention, %s: %d in %.0f ms", label, r.status_code, out["attention"][label]["ms"])
    finally:
        server.stop()
    return out
