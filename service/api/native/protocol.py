"""attnserve's own request and response bodies (the wire shapes), with the examples shown at /docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bundlespec.graphs import LENS_TOP
from service.api.schema import TOP_K, AblatedHead, HeadIndex, LayerIndex, TokenId, exactly_one_of

NonEmptyText = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


def _schema(example: dict[str, Any]) -> dict[str, Any]:
    """A request's schema extras: its example, and the rule that exactly one kind of input is given."""
    return {"examples": [example], **exactly_one_of("texts", "token_ids")}


class Inputs(BaseModel):
    """Either texts or token_ids, one entry per input row."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=exactly_one_of("texts", "token_ids"))

    texts: list[NonEmptyText] | None = Field(None, min_length=1, description="Inputs as text.")
    token_ids: list[TokenIds] | None = Field(None, min_length=1, description="Inputs as token ids, instead of texts.")
    truncate: bool = Field(
        False, description="Keep the last context_length tokens of a longer input instead of answering 422."
    )
    model: str | None = Field(
        None, description="The model to ask (GET /v1/models lists them); the default model when left out."
    )

    @model_validator(mode="after")
    def _one_kind_of_input(self) -> Inputs:
        if (self.texts is None) == (self.token_ids is None):
            raise ValueError("give exactly one of 'texts' or 'token_ids'")
        return self

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


class Ablatable(BaseModel):
    ablate: list[AblatedHead] | None = Field(
        None,
        description="Heads to ablate, as [layer, head] pairs: each one's output (its attention-weighted sum of "
        "values, before W_O) is zeroed. [] or none: the model as it is.",
        examples=[[[0, 2]]],
    )


class NextTokenRequest(Ablatable, Inputs):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_schema({"texts": ["ROMEO:", "To be, or not to"], "top_k": 3}),
    )
    top_k: int = Field(
        5, ge=1, description="How many candidates to return (at most the vocabulary size).", json_schema_extra=TOP_K
    )
    # The floor keeps every returned log-probability finite (JSON has no -Infinity).
    temperature: float = Field(
        1.0, ge=1e-3, le=100, description="Softmax temperature applied to the logits; lower is sharper."
    )


class TokenProb(BaseModel):
    token: str = Field(description="The token decoded to text.")
    token_id: int
    prob: float
    logprob: float


class NextTokenResult(BaseModel):
    n_tokens: int = Field(description="Tokens in the (possibly truncated) input.")
    truncated: bool
    top: list[TokenProb] = Field(description="Most probable next tokens, most probable first.")


class NextTokenResponse(BaseModel):
    model: str
    results: list[NextTokenResult]


class AttentionRequest(Ablatable, Inputs):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_schema({"texts": ["I do not like"], "layers": [0], "heads": [0, 1]}),
    )
    layers: list[LayerIndex] | None = Field(None, min_length=1, description="Layer indices; all by default.")
    heads: list[HeadIndex] | None = Field(None, min_length=1, description="Head indices; all by default.")


class AttentionResult(BaseModel):
    tokens: list[str] = Field(description="Each position's token decoded to text.")
    token_ids: list[int]
    layers: list[int] = Field(description="The layer index of each entry of attention's first axis.")
    heads: list[int] = Field(description="The head index of each entry of attention's second axis.")
    attention: list[list[list[list[float]]]] = Field(
        description="[layer][head][query][key] softmax weights; each query row sums to 1, keys after the query are 0."
    )


class AttentionResponse(BaseModel):
    model: str
    results: list[AttentionResult]


class ScoreRequest(Ablatable, Inputs):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_schema({"texts": ["To be, or not to be."]}),
    )


class ScoreResult(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[float | None] = Field(
        description="log p(token | tokens before it) per position; null for the first, which has no context."
    )
    total_logprob: float
    n_tokens: int
    truncated: bool


class ScoreResponse(BaseModel):
    model: str
    results: list[ScoreResult]


class LogitLensRequest(Ablatable, Inputs):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_schema({"texts": ["we do like"], "model": "toy", "top_k": 3, "positions": "last"}),
    )
    top_k: int = Field(5, ge=1, le=LENS_TOP, description=f"Tokens per layer and position (at most {LENS_TOP}).")
    positions: Literal["all", "last"] = Field("all", description="Every position, or only the last.")


class LogitLensResult(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    positions: list[int] = Field(description="The position of each entry of a lens layer's list.")
    lens: list[list[list[TokenProb]]] = Field(
        description="[layer][position][k]: n_layer + 1 entries (0: the embeddings; l: after block l; the last: "
        "the model's own output), each the top k tokens of the residual stream read through the final "
        "LayerNorm and the unembedding."
    )


class LogitLensResponse(BaseModel):
    model: str
    results: list[LogitLensResult]


class HeadImportanceRequest(Inputs):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_schema({"texts": ["we do like like."], "model": "toy"})
    )


class HeadImportanceResult(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    mean_logprob: float = Field(description="Mean over positions of log p(next token), every head on.")
    importance: list[list[float]] = Field(
        description="[layer][head]: the mean over positions of log p(next token) with that head ablated, minus "
        "mean_logprob (negative: the model needs the head)."
    )


class HeadImportanceResponse(BaseModel):
    model: str
    results: list[HeadImportanceResult]
