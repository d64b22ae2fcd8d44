"""The serving graphs, as thin wrappers around the trained model; names and axes come from bundlespec.

Each wrapper computes only what its job needs, so next-token requests never pay for the
[batch, seq, vocab] logits or the attention tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from bundlespec import GRAPHS
from bundlespec.graphs import LENS_TOP, TOP_LOGPROBS
from bundlespec.manifest import Architecture
from model.transformer import AttentionLM


class PromptGraph(nn.Module):
    """A graph over a right-padded prompt batch: input_ids and attention_mask (B, T)."""

    def __init__(self, model: AttentionLM) -> None:
        super().__init__()
        self.model = model

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs to trace with: two rows, the second one padded, so no axis is traced as a constant."""
        ids = torch.randint(0, self.model.cfg.vocab_size, (2, 8))
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0
        return ids, mask


def example_interventions(cfg: Architecture, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """head_mask (B, L, nh) and steering (B, L, C) with the last row ablating a head and steered,
    so that both are traced as data."""
    head_mask = torch.ones(batch, cfg.n_layer, cfg.n_head)
    head_mask[-1, 0, 0] = 0.0
    steering = torch.zeros(batch, cfg.n_layer, cfg.d_model)
    steering[-1, 0] = torch.randn(cfg.d_model)
    return head_mask, steering


class IntervenableGraph(PromptGraph):
    """A prompt graph that also takes head_mask (B, L, nh) and steering (B, L, C), per row: rows
    with and without interventions share a batch."""

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return (*super().example_inputs(), *example_interventions(self.model.cfg, 2))


class NextTokenGraph(IntervenableGraph):
    def forward(self, input_ids, attention_mask, head_mask, steering) -> torch.Tensor:
        h_last = self.model.last_hidden(input_ids, attention_mask, head_mask, steering)  # (B, C)
        return torch.log_softmax(self.model.logits(h_last), dim=-1)  # (B, V)


class AttentionGraph(IntervenableGraph):
    """Only the asked-for maps leave the graph (bundlespec: maps, ascending). Each layer's heads are
    picked from that layer's (B, nh, T, T) alone, never from all layers stacked, so ONNX Runtime can
    free a layer's maps once its output and its picks are made: at GPT-2 small's 1024 tokens that is
    50 MB a row at a time instead of 604 MB."""

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        nh = self.model.cfg.n_head
        return (*super().example_inputs(), torch.tensor([0, nh + 1]))  # two layers' picks, so neither is constant

    def forward(self, input_ids, attention_mask, head_mask, steering, maps) -> torch.Tensor:
        _, weights = self.model.hidden_states(input_ids, attention_mask, True, head_mask, steering)
        nh = self.model.cfg.n_head
        picked = []
        for layer, w in enumerate(weights):
            local = maps - layer * nh
            picked.append(w.index_select(1, local[(local >= 0) & (local < nh)]))
        return torch.cat(picked, dim=1)  # (B, maps, T, T)


class ScoreGraph(IntervenableGraph):
    def forward(self, input_ids, attention_mask, head_mask, steering) -> tuple[torch.Tensor, ...]:
        hidden, _ = self.model.hidden_states(input_ids, attention_mask, False, head_mask, steering)  # (B, T, C)
        logprobs = torch.log_softmax(self.model.logits(hidden[:, :-1]), dim=-1)  # (B, T-1, V)
        targets = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
        k = min(TOP_LOGPROBS, self.model.cfg.vocab_size)
        top, top_ids = logprobs.topk(k, dim=-1)  # (B, T-1, K) each, most likely first
        return logprobs.gather(-1, targets).squeeze(-1), top, top_ids  # (B, T-1), (B, T-1, K), (B, T-1, K)


class LogitLensGraph(IntervenableGraph):
    def forward(self, input_ids, attention_mask, head_mask, steering) -> tuple[torch.Tensor, ...]:
        run = self.model.run_blocks(input_ids, attention_mask, False, head_mask, steering)
        x = run.activations.resid  # (B, L+1, T, C)
        logprobs = torch.log_softmax(self.model.logits(self.model.ln_f(x)), dim=-1)  # (B, L+1, T, V)
        k = min(LENS_TOP, self.model.cfg.vocab_size)
        return logprobs.topk(k, dim=-1)  # (B, L+1, T, K) log-probs and ids, most likely first


class ActivationsGraph(IntervenableGraph):
    def forward(self, input_ids, attention_mask, head_mask, steering) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.run_blocks(input_ids, attention_mask, False, head_mask, steering).activations)


class ResumeGraph(PromptGraph):
    """(stream, attention_mask, entry) -> log-probs after each row's last real token (see
    AttentionLM.resume)."""

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        cfg = self.model.cfg
        points = 2 * cfg.n_layer + 1
        entry = torch.tensor([points - 2, 0, points - 1, 1, 2, 0]) % points  # every kind of point, unsorted
        stream = torch.randn(len(entry), 8, cfg.d_model)
        mask = torch.ones(len(entry), 8, dtype=torch.int64)
        mask[1, 5:] = 0
        mask[3, 6:] = 0
        return stream, mask, entry

    def forward(self, stream, attention_mask, entry) -> torch.Tensor:
        return torch.log_softmax(self.model.logits(self.model.resume(stream, attention_mask, entry)), dim=-1)


class PrefillGraph(IntervenableGraph):
    def forward(self, input_ids, attention_mask, head_mask, steering):
        h_last, keys, values, last_attention = self.model.prefill(
            input_ids, attention_mask, head_mask=head_mask, steering=steering
        )
        return torch.log_softmax(self.model.logits(h_last), dim=-1), keys, values, last_attention


class DecodeGraph(PromptGraph):
    """One step against per-layer cache storage: (input_ids, positions, head_mask, steering, key
    caches..., value caches...) -> (log-probs, present keys..., present values..., step attention...)."""

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        cfg, capacity = self.model.cfg, 6
        caches = [torch.randn(2, cfg.n_head, capacity, cfg.d_head) for _ in range(2 * cfg.n_layer)]
        ids = torch.randint(0, cfg.vocab_size, (2, 1))
        # the second row is shorter
        return ids, torch.tensor([5, 3]), *example_interventions(cfg, 2), *caches

    def forward(self, input_ids, positions, head_mask, steering, *caches):
        n = self.model.cfg.n_layer
        h, keys, values, weights = self.model.decode(
            input_ids, positions, list(caches[:n]), list(caches[n:]), head_mask, steering
        )
        return torch.log_softmax(self.model.logits(h), dim=-1), *keys, *values, *weights


WRAPPERS: dict[str, type[PromptGraph]] = {
    "next_token": NextTokenGraph,
    "attention": AttentionGraph,
    "score": ScoreGraph,
    "logit_lens": LogitLensGraph,
    "activations": ActivationsGraph,
    "resume": ResumeGraph,
    "prefill": PrefillGraph,
    "decode": DecodeGraph,
}


def wrap(name: str, model: AttentionLM) -> PromptGraph:
    return WRAPPERS[name](model).eval()


HELPERS = ("copy", "resize_cache")


def export_graph(model: AttentionLM, name: str, path: str, opset: int = 17) -> None:
    """Trace one graph to ONNX with the dynamic axes that bundlespec names."""
    if name in HELPERS:
        _write_helper_graph(name, path, opset)
        return
    inputs, outputs = GRAPHS[name].tensors(model.cfg.n_layer)
    graph = wrap(name, model)
    torch.onnx.export(
        graph,
        graph.example_inputs(),
        path,
        input_names=[t.name for t in inputs],
        output_names=[t.name for t in outputs],
        dynamic_axes={t.name: t.dynamic_axes() for t in (*inputs, *outputs)},
        opset_version=opset,
        dynamo=False,
    )


def _write_helper_graph(name: str, path: str, opset: int) -> None:
    """The weight-free helper graphs (bundlespec: copy and resize_cache), written node by node."""
    import onnx
    from onnx import TensorProto, helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    if name == "copy":
        inputs = [helper.make_tensor_value_info("source", f32, ["size"])]
        outputs = [helper.make_tensor_value_info("target", f32, ["size"])]
        nodes = [helper.make_node("Identity", ["source"], ["target"])]
    else:  # resize_cache: pad axis 2 up to new_capacity with zeros, then cut it to new_capacity
        axes = ["batch", "heads", "capacity", "d_head"]
        inputs = [
            helper.make_tensor_value_info("cache", f32, axes),
            helper.make_tensor_value_info("new_capacity", i64, [1]),
        ]
        outputs = [helper.make_tensor_value_info("resized", f32, ["batch", "heads", "new_capacity", "d_head"])]

        def const(n: str, values: list[int]):
            return helper.make_node("Constant", [], [n], value=helper.make_tensor(n, i64, [len(values)], values))

        nodes = [
            const("two", [2]),
            const("zero", [0]),
            const("six_zeros", [0] * 6),
            helper.make_node("Shape", ["cache"], ["shape"]),
            helper.make_node("Gather", ["shape", "two"], ["capacity"]),  # [1]
            helper.make_node("Sub", ["new_capacity", "capacity"], ["missing"]),
            helper.make_node("Max", ["missing", "zero"], ["grow"]),
            helper.make_node("Concat", ["six_zeros", "grow", "zero"], ["pads"], axis=0),  # pad axis 2's end
            helper.make_node("Pad", ["cache", "pads"], ["padded"]),
            helper.make_node("Slice", ["padded", "zero", "new_capacity", "two"], ["resized"]),
        ]
    graph = helper.make_graph(nodes, name, inputs, outputs)
    # The IR version of the traced graphs: onnx's own default can be newer than ONNX Runtime reads.
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
