"""A GPT-2-family transformers checkpoint as a bundle of the repository:

python -m export.hf_import --from <transformers dir> --name <name> [--version 1] [--repository bundles]

The directory is what GPT2LMHeadModel.save_pretrained writes: config.json, model.safetensors (or
pytorch_model.bin) and tokenizer.json. Its weights go into AttentionLM with the architecture choices
GPT-2 needs (a learned position table, GELU's tanh form or not, no embedding scale, a tied head or
not), and the result is checked against transformers' own forward (logits, attentions and every
hidden state within 1e-4, on random token ids and on the tokenizer's own text) before it is exported
and verified like any other bundle. Nothing is written unless every check passes.

A checkpoint is untrusted input: model.safetensors is preferred; a pytorch_model.bin is read with
torch.load(weights_only=True), which cannot run code; a config.json that asks for remote code is
refused, and so is anything outside the GPT-2 family, with a message that names what is not supported.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bundlespec.manifest import Architecture
from export.bundle import write_bundle
from export.staging import staged
from export.verify import ParityError, verify_bundle
from model.transformer import AttentionLM

log = logging.getLogger("export.hf_import")

# Model types of the Hugging Face stack that are not GPT-2's layout, and what in them is not.
NOT_GPT2 = {
    "gpt_neox": "rotary positions and parallel attention and MLP (GPT-NeoX, Pythia)",
    "gptj": "rotary positions and parallel attention and MLP (GPT-J)",
    "llama": "rotary positions, RMSNorm and a gated MLP (Llama)",
    "mistral": "rotary positions, RMSNorm, a gated MLP and grouped-query attention (Mistral)",
    "falcon": "rotary positions, parallel blocks and multi-query attention (Falcon)",
    "gpt_bigcode": "multi-query attention (GPTBigCode, SantaCoder)",
    "opt": "an offset position table and post-LayerNorm options (OPT)",
    "bloom": "ALiBi positions (BLOOM)",
    "phi": "rotary positions and parallel blocks (Phi)",
    "qwen2": "rotary positions, RMSNorm and a gated MLP (Qwen2)",
}
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
TOLERANCE = 1e-4


class CheckpointError(ValueError):
    """The directory is not a GPT-2-family checkpoint this can import; the message says what is wrong."""


def read_config(directory: Path) -> tuple[Architecture, dict[str, Any]]:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: config.json is missing")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not JSON: {e}") from e
    if "auto_map" in config or config.get("trust_remote_code"):
        raise CheckpointError(f"{path} asks for remote code (auto_map): a checkpoint's own code is never run")
    kind = config.get("model_type")
    if kind in NOT_GPT2:
        raise CheckpointError(f"{path}: model_type {kind!r} is not supported: {NOT_GPT2[kind]}; only GPT-2's layout is")
    if kind != "gpt2":
        raise CheckpointError(f"{path}: model_type {kind!r} is not supported; only GPT-2-family checkpoints (gpt2) are")
    d_model = config.get("n_embd", 768)
    problems = []
    if config.get("n_inner") not in (None, 4 * d_model):
        problems.append(f"an MLP of width {config['n_inner']} (only 4 x n_embd = {4 * d_model})")
    activation = config.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        problems.append(f"the activation {activation!r} (only {', '.join(ACTIVATIONS)})")
    if not config.get("scale_attn_weights", True) or config.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("attention scores scaled otherwise than by 1/sqrt(d_head)")
    if config.get("add_cross_attention", False):
        problems.append("cross-attention")
    if problems:
        raise CheckpointError(f"{path}: not supported: {'; '.join(problems)}")
    try:
        arch = Architecture(
            vocab_size=config.get("vocab_size", 50257),
            n_layer=config.get("n_layer", 12),
            n_head=config.get("n_head", 12),
            d_model=d_model,
            context_length=config.get("n_positions", 1024),
            dropout=0.0,
            layer_norm_eps=config.get("layer_norm_epsilon", 1e-5),
            positions="learned",
            activation=ACTIVATIONS[activation],
            embedding_scale=False,
            tied_head=config.get("tie_word_embeddings", True),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return arch, config


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name, without the `transformer.` prefix GPT2LMHeadModel adds."""
    safetensors_file, bin_file = directory / "model.safetensors", directory / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        state = load_file(str(safetensors_file))
    elif bin_file.is_file():
        try:  # weights_only: tensors and plain containers, never arbitrary objects or code
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (whatever the unpickler refused, the message names it)
            raise CheckpointError(f"{bin_file} cannot be read as plain tensors: {e}") from e
    else:
        raise CheckpointError(f"{directory}: no weights (model.safetensors or pytorch_model.bin)")
    return {name.removeprefix("transformer."): t.float() for name, t in state.items()}


def to_attention_lm(arch: Architecture, weights: dict[str, torch.Tensor]) -> AttentionLM:
    """GPT-2's tensors in AttentionLM (the mapping of export/hf.py, the other way); a missing tensor or
    a wrong shape is refused by name."""
    C = arch.d_model

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in weights:
            raise CheckpointError(f"the checkpoint has no tensor {name}")
        t = weights[name]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{name} has shape {list(t.shape)}; config.json makes it {list(shape)}")
        return t

    state = {
        "tok_emb.weight": take("wte.weight", (arch.vocab_size, C)),
        "pos_emb.weight": take("wpe.weight", (arch.context_length, C)),
        "ln_f.weight": take("ln_f.weight", (C,)),
        "ln_f.bias": take("ln_f.bias", (C,)),
    }
    if not arch.tied_head:
        state["lm_head.weight"] = take("lm_head.weight", (arch.vocab_size, C))
    for i in range(arch.n_layer):
        at, to = f"h.{i}.", f"blocks.{i}."
        qkv = take(at + "attn.c_attn.weight", (C, 3 * C))  # Conv1D: (in, out)
        qkv_bias = take(at + "attn.c_attn.bias", (3 * C,))
        for j, name in enumerate(("w_q", "w_k", "w_v")):
            state[f"{to}attn.{name}.weight"] = qkv[:, j * C : (j + 1) * C].T
            state[f"{to}attn.{name}.bias"] = qkv_bias[j * C : (j + 1) * C]
        state |= {
            to + "ln_attn.weight": take(at + "ln_1.weight", (C,)),
            to + "ln_attn.bias": take(at + "ln_1.bias", (C,)),
            to + "attn.w_o.weight": take(at + "attn.c_proj.weight", (C, C)).T,
            to + "attn.w_o.bias": take(at + "attn.c_proj.bias", (C,)),
            to + "ln_mlp.weight": take(at + "ln_2.weight", (C,)),
            to + "ln_mlp.bias": take(at + "ln_2.bias", (C,)),
            to + "mlp.up.weight": take(at + "mlp.c_fc.weight", (C, 4 * C)).T,
            to + "mlp.up.bias": take(at + "mlp.c_fc.bias", (4 * C,)),
            to + "mlp.down.weight": take(at + "mlp.c_proj.weight", (4 * C, C)).T,
            to + "mlp.down.bias": take(at + "mlp.c_proj.bias", (C,)),
        }
    model = AttentionLM(arch)
    model.load_state_dict({k: v.contiguous() for k, v in state.items()})
    return model.eval()


def read_tokenizer(directory: Path, arch: Architecture) -> str:
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: tokenizer.json is missing (a fast tokenizer's file is needed)")
    from tokenizers import Tokenizer

    text = path.read_text(encoding="utf-8")
    size = Tokenizer.from_str(text).get_vocab_size()
    if size != arch.vocab_size:
        raise CheckpointError(f"the tokenizer has {size} tokens but the embedding has {arch.vocab_size} rows")
    return text


def check_against_transformers(model: AttentionLM, directory: Path, tokenizer_json: str, seed: int = 0) -> dict:
    """AttentionLM against transformers' own forward of the same directory: logits, attentions and
    hidden states (every layer's residual stream, the last one after the final LayerNorm), on random
    ids and on the tokenizer's own text. Returns the worst differences; raises past TOLERANCE."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32)
    reference = reference.eval()
    arch = model.cfg
    rng = np.random.default_rng(seed)
    text = Tokenizer.from_str(tokenizer_json).encode("To be, or not to be, that is the question: " * 8).ids
    samples = [
        rng.integers(0, arch.vocab_size, min(arch.context_length, 48)).tolist(),
        text[: arch.context_length] or [0],
    ]
    worst = {"logits": 0.0, "attentions": 0.0, "hidden_states": 0.0}
    for ids in samples:
        x = torch.tensor([ids])
        with torch.no_grad():
            want = reference(x, output_attentions=True, output_hidden_states=True)
            run = model.run_blocks(x, need_weights=True)
            hidden = run.activations.resid[0]  # (L+1, T, C)
            got = {
                "logits": model.logits(model.ln_f(hidden[-1])),
                "attentions": torch.stack(run.weights, 1)[0],
                # transformers' last hidden state is after the final LayerNorm; the others before each block
                "hidden_states": torch.cat([hidden[:-1], model.ln_f(hidden[-1:])]),
            }
        expected = {
            "logits": want.logits[0],
            "attentions": torch.stack(want.attentions, 1)[0],
            "hidden_states": torch.stack(want.hidden_states)[:, 0],
        }
        for name in worst:
            worst[name] = max(worst[name], float((got[name] - expected[name]).abs().max()))
    for name, err in worst.items():
        if err > TOLERANCE:
            raise ParityError(f"{name} differ from transformers' by {err:.2e} > {TOLERANCE:.0e}")
    return worst


def import_checkpoint(directory: Path, out: Path, name: str, version: str) -> dict:
    """Read, check against transformers, export and verify into `out`; nothing is left at `out` on failure."""
    arch, config = read_config(directory)
    tokenizer_json = read_tokenizer(directory, arch)
    model = to_attention_lm(arch, read_weights(directory))
    worst = check_against_transformers(model, directory, tokenizer_json)
    log.info("against transformers: %s", ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    metrics = {"train_config": {"imported_from": str(directory), "transformers_parity": worst}}
    with staged(out) as staging:
        write_bundle(model, tokenizer_json, metrics, staging, name, version)
        verify_bundle(model, staging, trials=4)
    return worst


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m export.hf_import", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", type=Path, required=True, help="a transformers GPT-2 directory")
    p.add_argument("--name", required=True, help="the model's name in the repository")
    p.add_argument("--version", default="1")
    p.add_argument("--repository", type=Path, default=Path("bundles"))
    args = p.parse_args(argv)
    out = args.repository / args.name / args.version
    try:
        import_checkpoint(args.source, out, args.name, args.version)
    except (CheckpointError, ParityError) as e:
        log.error("not imported: %s", e)
        return 1
    log.info("imported %s as %s; serve it with MODEL_REPOSITORY=%s", args.source, out, args.repository)
    return 0


if __name__ == "__main__":
    sys.exit(main())
