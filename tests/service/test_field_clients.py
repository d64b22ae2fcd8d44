"""What the field's benchmark clients (vLLM's and TGI's, aiperf) send and expect: /health, requests
without a model, and vLLM's extension fields, through the unmodified openai SDK where it can."""

import json

import httpx
import numpy as np
import openai
import pytest

from service.core.sampling import Sampler, SamplingParams

PROMPT = "I do not"


@pytest.fixture(scope="module")
def client(toy_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=toy_server.url + "/v1", api_key="unused", max_retries=0)


def greedy(client, **kw):
    return client.completions.create(model="toy", prompt=PROMPT, temperature=0, max_tokens=12, **kw).choices[0]


def test_health_answers_like_readiness(toy_server):
    assert httpx.get(toy_server.url + "/health").status_code == 200


def test_a_request_without_a_model_gets_the_served_one(toy_server, client):
    r = httpx.post(toy_server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200 and r.json()["model"] == "toy"
    assert r.json()["choices"][0]["text"] == greedy(client).text


def test_vllm_fields_that_change_nothing_here_are_accepted(client):
    plain = greedy(client).text
    extra = {"ignore_eos": True, "skip_special_tokens": False, "add_special_tokens": True, "repetition_penalty": 1.0}
    assert greedy(client, extra_body=extra).text == plain


def test_min_tokens_holds_stop_strings_back_until_then(client):
    full = greedy(client).text
    stop = full[2:5]  # a stop string the text meets within its first few tokens
    assert greedy(client, stop=[stop]).text == full[: full.index(stop)]
    # With min_tokens = 10 that first stop string does not count: the text runs past it.
    held = greedy(client, stop=[stop], extra_body={"min_tokens": 10}).text
    assert held.startswith(full[: full.index(stop) + len(stop)])


def test_a_repetition_penalty_steers_away_from_seen_tokens_but_reports_the_models_logprobs():
    logprobs = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    plain = Sampler(SamplingParams(temperature=0), None, np.array([0]))
    penalised = Sampler(SamplingParams(temperature=0, repetition_penalty=3.0), None, np.array([0]))
    assert plain.choose(logprobs) == 0 and penalised.choose(logprobs) == 1
    assert penalised.choose(logprobs) == 2, "token 1 is now seen too"
    assert logprobs[0] == np.float32(np.log(0.5)), "the caller's log-probs are not changed"


def test_min_p_keeps_only_tokens_near_the_most_likely():
    logprobs = np.log(np.array([0.6, 0.35, 0.05], dtype=np.float32))
    draws = {Sampler(SamplingParams(min_p=0.6), seed, None).choose(logprobs) for seed in range(200)}
    assert draws == {0}, "0.35 < 0.6 x 0.6: only the first token stays"


def test_continuous_usage_stats_puts_the_usage_so_far_on_every_chunk(toy_server):
    body = {
        "prompt": PROMPT,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "ignore_eos": True,
    }
    r = httpx.post(toy_server.url + "/v1/completions", json=body)
    events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
    counts = [e["usage"]["completion_tokens"] for e in events if e["choices"]]
    assert counts == [1, 2, 3, 4, 5, 6], counts
    assert events[-1]["usage"]["total_tokens"] == events[-1]["usage"]["prompt_tokens"] + 6


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ignore_eos", "yes"),
        ("min_tokens", -1),
        ("min_tokens", 17),
        ("repetition_penalty", "1"),
        ("min_p", 2),
        ("stop_token_ids", [1]),
        ("include_stop_str_in_output", True),
        ("stream_options", {"include_usage": True, "continuous_usage_stats": "x"}),
    ],
)
def test_vllm_fields_of_the_wrong_type_are_a_400_naming_them(toy_server, field, value):
    body = {"prompt": PROMPT, "stream": True, field: value}
    r = httpx.post(toy_server.url + "/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
