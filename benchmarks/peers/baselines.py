"""Baseline servers for the serving benchmark, run with uvicorn like the service itself.

constant: FastAPI returning a fixed next-token-sized JSON body: the HTTP layer's own limit here.
naive:    FastAPI calling the PyTorch model once per request, as one might write it in an
          afternoon: no batching, no ONNX, the tokenizer and the model in the handler.

    BASELINE=naive MODEL_DIR=bundles/attnserve-shakespeare/1 uvicorn benchmarks.peers.baselines:app --port 8001
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response


def constant_app(body: bytes) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/next-token")
    async def next_token() -> Response:
        return Response(body, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def naive_app(bundle_dir: Path) -> FastAPI:
    import torch
    from tokenizers import Tokenizer

    from export.bundle import load_torch_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_torch_model(bundle_dir)
    tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    context = model.cfg.context_length
    app = FastAPI()

    @app.post("/v1/next-token")
    def next_token(body: dict[str, Any]) -> dict[str, Any]:
        results = []
        for text in body["texts"]:
            ids = tokenizer.encode(text).ids[-context:]
            with torch.inference_mode():
                hidden, _ = model.hidden_states(torch.tensor([ids]))
                logprobs = torch.log_softmax(model.logits(hidden[0, -1]), dim=-1)
            top = torch.topk(logprobs, body.get("top_k", 5))
            results.append(
                {
                    "n_tokens": len(ids),
                    "truncated": False,
                    "top": [
                        {
                            "token": tokenizer.decode([int(i)]),
                            "token_id": int(i),
                            "prob": float(v.exp()),
                            "logprob": float(v),
                        }
                        for v, i in zip(top.values, top.indices, strict=True)
                    ],
                }
            )
        return {"model": "naive", "results": results}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _make() -> FastAPI:
    kind = os.environ.get("BASELINE", "constant")
    if kind == "naive":
        return naive_app(Path(os.environ["MODEL_DIR"]))
    return constant_app(os.environ.get("CONSTANT_BODY", json.dumps({"model": "constant", "results": []})).encode())


app = _make()
