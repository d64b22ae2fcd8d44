"""attnserve's own request and response bodies (the wire shapes), with the examples shown at /docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bundlespec.graphs import LENS_TOP
from service.api.schema import (
    STEER_DESCRIPTION,
    TOP_K,
    AblatedHead,
    HeadIndex,
    LayerIndex,
    SteerEntry,
    TokenId,
    exactly_one_of,
)
from service.core.jobs import SITES
from service.core.patching import DIRECTIONS
from service.core.patching import SITES as PATCH_SITES
from service.core.steering import MAX_STEER_ENTRIES, SteerSpec

NonEmptyText = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
EXAMPLE_STEER = {"layer": 1, "vector": {"add": "love", "subtract": "hate"}, "scale": 4.0}
Site = Literal[SITES]  # type: ignore[valid-type]
PatchSite = Literal[PATCH_SITES]  # type: ignore[valid-type]


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


class Intervenable(BaseModel):
    ablate: list[AblatedHead] | None = Field(
        None,
        description="Heads to ablate, as [layer, head] pairs: each one's output (its attention-weighted sum of "
        "values, before W_O) is zeroed. [] or none: the model as it is.",
        examples=[[[0, 2]]],
    )
    steer: list[SteerEntry] | None = Field(
        None, max_length=MAX_STEER_ENTRIES, description=STEER_DESCRIPTION, examples=[[EXAMPLE_STEER]]
    )

    def steer_specs(self) -> list[SteerSpec] | None:
        return None if self.steer is None else [entry.spec() for entry in self.steer]


class NextTokenRequest(Intervenable, Inputs):
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


class Token(BaseModel):
    token: str = Field(description="The token decoded to text.")
    token_id: int


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


class AttentionRequest(Intervenable, Inputs):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_schema({"texts": ["I do not like"], "layers": [0], "heads": [0, 1]}),
    )
    layers: list[LayerIndex] | None = Field(None, min_length=1, description="Layer indices; all by default.")
    heads: list[HeadIndex] | None = Field(None, min_length=1, description="Head indices; all by default.")
    queries: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        description="Query positions (rows of each map) to return, within every input; all by default. A long "
        "input's answer for a few queries is that much smaller (the maps are computed whole either way).",
    )


class AttentionResult(BaseModel):
    tokens: list[str] = Field(description="Each position's token decoded to text.")
    token_ids: list[int]
    layers: list[int] = Field(description="The layer index of each entry of attention's first axis.")
    heads: list[int] = Field(description="The head index of each entry of attention's second axis.")
    queries: list[int] = Field(description="The query position of each entry of attention's third axis.")
    attention: list[list[list[list[float]]]] = Field(
        description="[layer][head][query][key] softmax weights; each query row sums to 1, keys after the query are 0."
    )


class AttentionResponse(BaseModel):
    model: str
    results: list[AttentionResult]


class ScoreRequest(Intervenable, Inputs):
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


class LogitLensRequest(Intervenable, Inputs):
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


class ActivationsRequest(Intervenable, Inputs):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_schema(
            {"texts": ["we do like"], "model": "toy", "sites": ["resid_pre", "z"], "layers": [1], "positions": "last"}
        ),
    )
    sites: list[Site] = Field(
        ["resid_pre"],
        min_length=1,
        description="resid_pre (the stream before the block, steering included), resid_post (after it), attn_out "
        "(the attention layer's output, W_O's bias included), mlp_out, z (each head's attention-weighted sum "
        "of values, before W_O).",
    )
    layers: list[LayerIndex] | None = Field(None, min_length=1, description="Layer indices; all by default.")
    positions: Literal["all", "last"] | list[Annotated[int, Field(ge=0)]] = Field(
        "all", description='"all", "last", or a list of positions (each within every input).'
    )


class ActivationsResult(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    layers: list[int]
    positions: list[int]
    activations: dict[str, list[list[list[Any]]]] = Field(
        description="site -> [layer][position][d_model] float32 values; z: [layer][position][head][d_head]."
    )


class ActivationsResponse(BaseModel):
    model: str
    results: list[ActivationsResult]


TokenChoice = TokenId | NonEmptyText


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    correct: TokenChoice = Field(description="A token id, or a text that is exactly one token.")
    incorrect: TokenChoice = Field(description="A token id, or a text that is exactly one token.")


class PatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "model": "toy",
                    "clean": "I do not like",
                    "corrupted": "I do do like",
                    "answer": {"correct": " hate", "incorrect": " like"},
                }
            ]
        },
    )
    clean: NonEmptyText | TokenIds = Field(description="The clean input, as text or token ids.")
    corrupted: NonEmptyText | TokenIds = Field(description="The corrupted input: as many tokens as clean.")
    answer: Answer | None = Field(
        None, description="Default: the clean run's top next token against the corrupted run's."
    )
    sites: list[PatchSite] = Field(
        list(PATCH_SITES),
        min_length=1,
        description="heads: one cell per layer and head (its output at every position); resid_pre, attn_out, "
        "mlp_out: one cell per layer and position.",
    )
    direction: Literal[DIRECTIONS] = Field(  # type: ignore[valid-type]
        "denoise",
        description="denoise: each clean activation put into the corrupted run; noise: each corrupted one into the "
        "clean run.",
    )
    model: str | None = Field(None, description="The model to ask; the default model when left out.")


class PatchRun(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    logit_diff: float = Field(description="logit(correct) - logit(incorrect) after the last token.")


class PatchCells(BaseModel):
    logit_diff: list[list[float]] = Field(description="[layer][head] for heads, [layer][position] for the others.")
    score: list[list[float]] = Field(
        description="(logit_diff - corrupted) / (clean - corrupted): 0 corrupted, 1 clean."
    )


class PatchResponse(BaseModel):
    model: str
    direction: str
    answer: dict[str, Token]
    clean: PatchRun
    corrupted: PatchRun
    sites: dict[str, PatchCells]


class SteeringVectorRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"model": "toy", "layer": 1, "add": "love", "subtract": "hate"}]},
    )
    layer: LayerIndex
    add: NonEmptyText
    subtract: NonEmptyText | None = None
    model: str | None = Field(None, description="The model to ask; the default model when left out.")


class SteeringVectorResponse(BaseModel):
    model: str
    layer: int
    vector: list[float] = Field(
        description="mean resid_pre[layer](add) - mean resid_pre[layer](subtract), over each text's positions."
    )
    norm: float


class LogitAttributionRequest(Intervenable, Inputs):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_schema({"texts": ["I do not like"], "model": "toy"}),
    )
    target: TokenChoice | None = Field(None, description="The token whose logit is split; default the top next one.")
    position: Annotated[int, Field(ge=0)] | None = Field(None, description="The position; default the last.")


class LogitAttributionResult(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    position: int
    target: Token
    logit: float = Field(description="The target's logit: the sum of every part below.")
    embeddings: float
    heads: list[list[float]] = Field(description="[layer][head]: each head's output through its W_O slice.")
    attention_biases: list[float] = Field(description="[layer]: each attention layer's W_O bias.")
    mlps: list[float] = Field(description="[layer]: each MLP's output.")
    steering: list[float] | None = Field(None, description="[layer]: each layer's steering vector, when steered.")
    final_bias: float = Field(description="The final LayerNorm's bias through the unembedding.")


class LogitAttributionResponse(BaseModel):
    model: str
    results: list[LogitAttributionResult]
