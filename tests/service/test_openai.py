"""The OpenAI-compatible API, spoken to by the unmodified `openai` package on a real server."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import openai
import pytest

PROMPT = "I do not"


@pytest.fixture(scope="module")
def client(toy_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=toy_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def aclient(toy_server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=toy_server.url + "/v1", api_key="unused", max_retries=0)


def greedy(client, prompt=PROMPT, **kw):
    return client.completions.create(model="toy", prompt=prompt, temperature=0, **{"max_tokens": 12, **kw})


def test_a_completion_continues_the_text_and_counts_its_tokens(client):
    out = greedy(client)
    (choice,) = out.choices
    assert out.object == "text_completion" and out.model == "toy" and out.id.startswith("cmpl-")
    assert choice.text.startswith(" like hate.") and choice.finish_reason == "length"
    assert out.usage.prompt_tokens == 3 and out.usage.completion_tokens == 12 and out.usage.total_tokens == 15


def test_logprobs_name_each_token_with_its_alternatives(client):
    choice = greedy(client, logprobs=3).choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == 12
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3 and top[token] == pytest.approx(logprob)  # greedy: the chosen one is on top
        assert logprob == pytest.approx(max(top.values()))
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_echo_gives_the_prompt_log_probs_of_the_score_endpoint(client, toy_server):
    text = "you not like hate."
    out = client.completions.create(model="toy", prompt=text, max_tokens=0, echo=True, logprobs=1)
    lp = out.choices[0].logprobs
    score = httpx.post(toy_server.url + "/v1/score", json={"texts": [text]}).json()["results"][0]
    assert out.choices[0].text == text and lp.tokens == score["tokens"]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(score["logprobs"][1:], abs=1e-6)


def test_a_stop_string_ends_the_text_before_it(client):
    choice = greedy(client, stop=["."]).choices[0]
    assert choice.text == " like hate" and choice.finish_reason == "stop"


def test_n_choices_with_a_seed_repeat_and_token_id_prompts_match_text(client, toy_server):
    sampled = {"model": "toy", "max_tokens": 10, "temperature": 1.5, "n": 3, "seed": 11}
    first = client.completions.create(prompt=["we", PROMPT], **sampled)
    again = client.completions.create(prompt=["we", PROMPT], **sampled)
    assert [c.index for c in first.choices] == list(range(6))
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    ids = httpx.post(toy_server.url + "/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    assert greedy(client, prompt=ids).choices[0].text == greedy(client).choices[0].text
    assert greedy(client, prompt=[ids, ids]).choices[1].text == greedy(client).choices[0].text


def test_streaming_gives_the_same_text_as_one_answer_and_ends_with_usage(client):
    chunks = list(
        client.completions.create(
            model="toy",
            prompt=PROMPT,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *tokens, last = chunks
    assert "".join(c.choices[0].text for c in tokens) == greedy(client).choices[0].text
    assert tokens[-1].choices[0].finish_reason == "length"
    assert last.choices == [] and last.usage.completion_tokens == 12


def test_bad_requests_raise_the_sdks_own_errors_and_the_server_keeps_serving(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt=PROMPT)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="toy", prompt=PROMPT, max_tokens=40)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="toy", prompt=PROMPT, temperature=3)
    with pytest.raises(openai.BadRequestError, match="at least 1 character"):
        client.completions.create(model="toy", prompt="")
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.completions.create(model="toy", prompt=[10**6])
    assert greedy(client).choices[0].text


def test_a_greedy_completion_is_the_same_alone_and_among_31_others(aclient):
    async def main():
        alone = await aclient.completions.create(model="toy", prompt=PROMPT, temperature=0, max_tokens=15)
        prompts = [PROMPT if i == 17 else ["we do", "you", "they do like"][i % 3] for i in range(32)]
        crowd = await asyncio.gather(
            *(aclient.completions.create(model="toy", prompt=p, temperature=0, max_tokens=15) for p in prompts)
        )
        return alone.choices[0].text, crowd[17].choices[0].text

    alone, among = asyncio.run(main())
    assert alone == among


def test_models_and_the_tokenizer_routes(client, toy_server):
    (card,) = client.models.list().data
    assert card.id == "toy" and card.owned_by == "attnserve"
    assert client.models.retrieve("toy").id == "toy"
    tok = httpx.post(toy_server.url + "/tokenize", json={"prompt": PROMPT, "return_token_strs": True}).json()
    assert tok["count"] == 3 and "".join(tok["token_strs"]) == PROMPT and tok["max_model_len"] == 24
    text = httpx.post(toy_server.url + "/detokenize", json={"tokens": tok["tokens"]}).json()
    assert text == {"prompt": PROMPT}
    info = httpx.get(toy_server.url + "/tokenizer_info").json()
    assert info["vocab_size"] == card.vocab_size and info["model_max_length"] == 24


def test_a_request_larger_than_the_generation_queue_is_a_400_not_a_retry(toy_bundle, server_factory):
    server = server_factory(toy_bundle, max_waiting_sequences=2)
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    # On an idle server: it could never fit, so "retry later" would be a lie.
    with pytest.raises(openai.BadRequestError, match="MAX_WAITING_SEQUENCES=2") as e:
        c.completions.create(model="toy", prompt=[PROMPT, PROMPT], n=2)
    assert "retry-after" not in e.value.response.headers
    assert c.completions.create(model="toy", prompt=PROMPT, n=2, max_tokens=2).choices


def test_attention_while_generating_matches_the_attention_endpoint(client, toy_server):
    body = {"model": "toy", "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "attention": {"layers": [1]}}
    choice = httpx.post(toy_server.url + "/v1/completions", json=body).json()["choices"][0]
    ids = httpx.post(toy_server.url + "/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    seq = list(ids)
    for _ in range(3):  # the same greedy tokens, one next-token call at a time
        top = httpx.post(toy_server.url + "/v1/next-token", json={"token_ids": [seq], "top_k": 1}).json()
        seq.append(top["results"][0]["top"][0]["token_id"])
    full = httpx.post(toy_server.url + "/v1/attention", json={"token_ids": [seq], "layers": [1]}).json()
    want = np.array(full["results"][0]["attention"])  # (1, heads, n, n)
    for k, step in enumerate(choice["attention"]):  # token k was predicted at position len(ids) + k - 1
        n = len(ids) + k
        np.testing.assert_allclose(np.array(step), want[:, :, n - 1, :n], atol=1e-5)
    streamed = [
        line
        for line in httpx.post(toy_server.url + "/v1/completions", json={**body, "stream": True}).text.splitlines()
        if line.startswith("data: {")
    ]
    first = json.loads(streamed[0][6:])["choices"][0]["attention"]
    np.testing.assert_allclose(np.array(first), np.array(choice["attention"][0]), atol=1e-6)
