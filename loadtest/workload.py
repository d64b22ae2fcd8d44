"""What the load tests send: request bodies for each endpoint, built from the prompt file."""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS_FILE = Path(__file__).with_name("prompts.txt")
ENDPOINTS = {
    "next-token": "/v1/next-token",
    "attention": "/v1/attention",
    "score": "/v1/score",
}


def load_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.replace("\\n", "\n") for line in lines if line.strip() and not line.startswith("#")]


def request_body(endpoint: str, prompt: str) -> dict:
    if endpoint == "next-token":
        return {"texts": [prompt], "top_k": 5, "truncate": True}
    if endpoint == "attention":
        # One layer and two heads: what a visualisation asks for, and a response of reasonable size.
        return {"texts": [prompt], "layers": [0], "heads": [0, 1], "truncate": True}
    return {"texts": [prompt], "truncate": True}


def request_bodies(endpoint: str, prompts: list[str] | None = None) -> list[bytes]:
    return [json.dumps(request_body(endpoint, p)).encode() for p in prompts or load_prompts()]


def kserve_body(prompt: str, top_k: int = 5) -> dict:
    """The KServe v2 form of a next-token request: the top k from the classification extension.

    The benchmark sends these same bytes to the service and to Triton.
    """
    return {
        "inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [prompt]}],
        "outputs": [{"name": "next_token_logprobs", "parameters": {"classification": top_k}}],
    }


def kserve_bodies(prompts: list[str] | None = None) -> list[bytes]:
    return [json.dumps(kserve_body(p)).encode() for p in prompts or load_prompts()]
