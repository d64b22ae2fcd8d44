"""The OpenAI completions API's request and response bodies, in OpenAI's field names and shapes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bundlespec.graphs import TOP_LOGPROBS

MAX_N = 16
NonEmpty = Annotated[str, Field(min_length=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class AttentionSelection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1, description="All by default.")
    heads: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1, description="All by default.")


class CompletionRequest(BaseModel):
    # strict: `"max_tokens": true` or `"n": "2"` are errors, not 1 and 2.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"model": "attnserve-shakespeare", "prompt": "ROMEO:", "max_tokens": 16, "temperature": 0}]
        },
    )

    model: str
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, a list of texts, a list of token ids, or a list of such lists."
    )
    max_tokens: int = Field(16, ge=0, description="Tokens to generate; prompt + max_tokens must fit the context.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1, description="Keep the k most likely tokens (-1 or 0: all). Not in OpenAI's API.")
    n: int = Field(1, ge=1, le=MAX_N, description="Completions per prompt.")
    seed: int | None = Field(None, description="The same seed and request give the same text.")
    stop: str | list[NonEmpty] | None = Field(None, description="Up to 4 strings; the text ends before the first.")
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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported")
        if self.best_of not in (None, self.n):
            raise ValueError("best_of is not supported (other than best_of == n)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop takes at most 4 strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

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
    tokens: list[int]


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
