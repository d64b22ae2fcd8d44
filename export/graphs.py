"""The three serving graphs, as thin wrappers around the trained model.

Each wrapper computes only what its endpoint needs, so next-token requests never pay for the
[batch, seq, vocab] logits or the attention tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from model.transformer import AttentionLM
from service import contract


class NextTokenGraph(nn.Module):
    def __init__(self, model: AttentionLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h_last = self.model.last_hidden(input_ids, attention_mask)  # (B, C)
        return torch.log_softmax(self.model.logits(h_last), dim=-1)  # (B, V)


class AttentionGraph(nn.Module):
    def __init__(self, model: AttentionLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        _, weights = self.model.hidden_states(input_ids, attention_mask, need_weights=True)
        return torch.stack(weights, dim=1)  # (B, L, nh, T, T)


class ScoreGraph(nn.Module):
    def __init__(self, model: AttentionLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.model.hidden_states(input_ids, attention_mask)  # (B, T, C)
        logprobs = torch.log_softmax(self.model.logits(hidden[:, :-1]), dim=-1)  # (B, T-1, V)
        targets = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
        return logprobs.gather(-1, targets).squeeze(-1)  # (B, T-1)


GRAPHS: dict[str, type[nn.Module]] = {
    contract.NEXT_TOKEN: NextTokenGraph,
    contract.ATTENTION: AttentionGraph,
    contract.SCORE: ScoreGraph,
}


def output_axes(kind: str) -> dict[int, str]:
    if kind == contract.NEXT_TOKEN:
        return {0: contract.BATCH_AXIS}
    if kind == contract.ATTENTION:
        return {0: contract.BATCH_AXIS, 3: contract.SEQ_AXIS, 4: contract.SEQ_AXIS}
    return {0: contract.BATCH_AXIS, 1: contract.SCORE_SEQ_AXIS}


def export_graph(model: AttentionLM, kind: str, path: str, opset: int = 17) -> None:
    """Trace one graph to ONNX with dynamic batch and sequence axes."""
    graph = GRAPHS[kind](model).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    io_axes = {0: contract.BATCH_AXIS, 1: contract.SEQ_AXIS}
    torch.onnx.export(
        graph,
        (ids, mask),
        path,
        input_names=list(contract.INPUT_NAMES),
        output_names=[contract.OUTPUT_NAMES[kind]],
        dynamic_axes={
            contract.INPUT_IDS: io_axes,
            contract.ATTENTION_MASK: io_axes,
            contract.OUTPUT_NAMES[kind]: output_axes(kind),
        },
        opset_version=opset,
        dynamo=False,
    )
