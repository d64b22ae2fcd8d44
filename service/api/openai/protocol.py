"""The OpenAI completions API's request and response bodies, in OpenAI's field names and shapes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from bundlespec.graphs import TOP_LOGPROBS
from service.api.schema import STEER_DESCRIPTION, AblatedHead, HeadIndex, LayerIndex, SteerEntry, TokenId
from service.core.steering import MAX_STEER_ENTRIES

MAX_N = 16
NonEmpty = Annotated[str, Field(min_length=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False
    continuous_usage_stats: bool = Field(
        False, description="vLLM's: with include_usage, every chunk carries the usage so far."
    )


class AttentionSelection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    layers: list[LayerIndex] | None = Field(None, min_length=1, description="All by default.")
    heads: list[HeadIndex] | None = Field(None, min_length=1, description="All by default.")


class CompletionRequest(BaseModel):
    # strict: `"max_tokens": true` or `"n": "2"` are errors, not 1 and 2.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"model": "attnserve-shakespeare", "prompt": "ROMEO:", "max_tokens": 16, "temperature": 0}],
            # stream_options only with stream: true
            "if": {"properties": {"stream_options": {"type": "object"}}, "required": ["stream_options"]},
            "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
        },
    )

    model: str | None = Field(None, description="The model's id (`/v1/models`); the served model when left out.")
    # Never empty, in any form: the model has no start-of-text token to begin from.
    prompt: (
        NonEmpty
        | Annotated[list[NonEmpty], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    ) = Field(description="A text, a list of texts, a list of token ids, or a list of such lists.")
    max_tokens: int = Field(16, ge=0, description="Tokens to generate; prompt + max_tokens must fit the context.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1, description="Keep the k most likely tokens (-1 or 0: all). Not in OpenAI's API.")
    n: int = Field(1, ge=1, le=MAX_N, description="Completions per prompt.")
    seed: int | None = Field(
        None,
        description="The same seed and request give the same text. Any integer, taken modulo 2**64 (so a "
        "negative seed is its 64-bit two's complement, as torch's manual_seed reads it: -1 is 2**64 - 1).",
    )
    stop: str | Annotated[list[NonEmpty], Field(json_schema_extra={"maxItems": 4})] | None = Field(
        None, description="Up to 4 strings; the text ends before the first."
    )
    logprobs: int | None = Field(
        None, ge=0, le=TOP_LOGPROBS, description=f"Alternatives per token (0..{TOP_LOGPROBS})."
    )
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    attention: AttentionSelection | None = Field(
        None,
        description="attnserve's extension: each generated token's attention over the tokens before it, "
        "[layer][head][key], for these layers and heads. Not in OpenAI's API.",
    )
    # Accepted for compatibility at their neutral values only; anything else is refused.
    ablate: list[AblatedHead] | None = Field(
        None,
        description="attnserve's extension: heads to ablate, as [layer, head] pairs, at every generated step (and "
        "in the echoed prompt's log-probs). Not in OpenAI's API.",
    )
    steer: list[SteerEntry] | None = Field(
        None,
        max_length=MAX_STEER_ENTRIES,
        description="attnserve's extension: " + STEER_DESCRIPTION + " Not in OpenAI's API.",
    )
    # vLLM's extension fields, which the field's benchmark clients send. This model has no special
    # tokens (no end-of-text, no BOS), so the fields about them change nothing here.
    ignore_eos: bool = Field(
        False, description="vLLM's. No effect: there is no end-of-text token, so only max_tokens or stop end a text."
    )
    min_tokens: int = Field(0, ge=0, description="vLLM's: stop strings count only from this many tokens on.")
    repetition_penalty: float = Field(
        1.0,
        gt=0,
        le=10,
        description="vLLM's: > 1 discourages tokens already in the prompt or the text (their log-probs are "
        "multiplied by it before choosing); 1 is off. The returned log-probs stay the model's.",
    )
    min_p: float = Field(0.0, ge=0, le=1, description="vLLM's: drop tokens below min_p x the most likely one's prob.")
    skip_special_tokens: bool = Field(True, description="vLLM's. No effect: there are no special tokens.")
    spaces_between_special_tokens: bool = Field(True, description="vLLM's. No effect: there are no special tokens.")
    add_special_tokens: bool = Field(False, description="vLLM's. No effect: there are no special tokens.")
    include_stop_str_in_output: bool = Field(
        False,
        description="vLLM's; only false: the text ends before the stop string.",
        json_schema_extra={"const": False},
    )
    stop_token_ids: list[TokenId] | None = Field(
        None, description="vLLM's; only empty: use stop strings.", json_schema_extra={"maxItems": 0}
    )
    # The schema says the same (json_schema_extra), so that a schema-valid request is one the server takes.
    presence_penalty: float = Field(0.0, json_schema_extra={"minimum": 0, "maximum": 0})
    frequency_penalty: float = Field(0.0, json_schema_extra={"minimum": 0, "maximum": 0})
    best_of: int | None = Field(None, description="Only null or equal to n.")
    logit_bias: dict[str, float] | None = Field(None, json_schema_extra={"maxProperties": 0})
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0})

    # Field validators rather than one model validator, so that every refusal names its field in
    # OpenAI's `param` (a model validator's error belongs to no field).
    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float, info: ValidationInfo) -> float:
        if v:
            raise ValueError(f"{info.field_name} is not supported (only 0)")
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v not in (None, info.data.get("n", 1)):
            raise ValueError("best_of is not supported (other than best_of == n)")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            raise ValueError("logit_bias is not supported (only an empty object)")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix is not supported (only an empty string)")
        return v

    @field_validator("min_tokens")
    @classmethod
    def _within_max(cls, v: int, info: ValidationInfo) -> int:
        if v > info.data.get("max_tokens", 16):
            raise ValueError("min_tokens must not be larger than max_tokens")
        return v

    @field_validator("include_stop_str_in_output")
    @classmethod
    def _stop_excluded(cls, v: bool) -> bool:
        if v:
            raise ValueError("include_stop_str_in_output is not supported (only false)")
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _no_stop_ids(cls, v: list[int] | None) -> list[int] | None:
        if v:
            raise ValueError("stop_token_ids is not supported (only an empty list): use stop strings")
        return v

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("stop takes at most 4 strings")
        return v

    @field_validator("stream_options")
    @classmethod
    def _only_streamed(cls, v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if v is not None and not info.data.get("stream", False):
            raise ValueError("stream_options is only allowed with stream: true")
        return v

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class Choice(BaseModel):
    model_config = ConfigDict(extra="allow")  # "attention" when the request asked for it
    index: int
    text: str
    logprobs: Logprobs | None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """OpenAI's model object, with attnserve's facts about the model as extra fields."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- the tokenizer routes, in the shapes that evaluation harnesses call ---------------------------


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True  # the tokenizer has no special tokens; accepted for compatibility
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    tokenizer_class: str
    model_max_length: int
    vocab_size: int
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    extra: dict[str, Any] | None = None
