"""A bundle as a transformers checkpoint: python -m export.hf --bundle <bundle dir> --out <dir>.

The directory loads with AutoModelForCausalLM.from_pretrained(dir) and AutoTokenizer.from_pretrained(dir),
with no remote code: config.json, model.safetensors, generation_config.json and the tokenizer files.

Why GPT-2's classes: GPT2LMHeadModel computes exactly what AttentionLM does, given three folds. Its
blocks are the same pre-LayerNorm blocks (LayerNorm, attention with a bias on every projection and
softmax(QK^T / sqrt(d_head)), residual; LayerNorm, a 4x MLP with exact GELU, residual), then a final
LayerNorm and a linear head without bias. Its positions are a learned table added to the token
embeddings, and a table can hold our sine/cosine codes as they are (`wpe`). We scale the token
embeddings by sqrt(d_model) before adding the positions: GPT-2 does not, so the scale is folded into
`wte`. Our head is tied to the unscaled embeddings, so GPT-2's head is untied and holds them
(`tie_word_embeddings: false`). A model imported from GPT-2 (export/hf_import.py) goes back the same
way, with its own table, GELU and head. Q, K and V are one Conv1D (`c_attn`, weights stored input-major) whose
output splits into q, k, v and then into heads in our order, so the three projections concatenate.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

from bundlespec import TOKENIZER_FILE
from export.bundle import load_torch_model
from export.staging import staged
from model.transformer import AttentionLM

log = logging.getLogger("export.hf")


def gpt2_state(model: AttentionLM) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's parameters holding this model's weights (see the module's doc)."""
    state = {
        "transformer.wte.weight": model.tok_emb.weight * model.emb_scale,
        "transformer.wpe.weight": model.pos_emb.weight if model.cfg.positions == "learned" else model.pos_enc,
        "transformer.ln_f.weight": model.ln_f.weight,
        "transformer.ln_f.bias": model.ln_f.bias,
        "lm_head.weight": model.unembedding(),
    }
    for i, block in enumerate(model.blocks):
        at = f"transformer.h.{i}."
        attn = block.attn
        # Conv1D stores (in, out): the transpose of nn.Linear's (out, in).
        state |= {
            at + "ln_1.weight": block.ln_attn.weight,
            at + "ln_1.bias": block.ln_attn.bias,
            at + "attn.c_attn.weight": torch.cat([attn.w_q.weight.T, attn.w_k.weight.T, attn.w_v.weight.T], dim=1),
            at + "attn.c_attn.bias": torch.cat([attn.w_q.bias, attn.w_k.bias, attn.w_v.bias]),
            at + "attn.c_proj.weight": attn.w_o.weight.T,
            at + "attn.c_proj.bias": attn.w_o.bias,
            at + "ln_2.weight": block.ln_mlp.weight,
            at + "ln_2.bias": block.ln_mlp.bias,
            at + "mlp.c_fc.weight": block.mlp.up.weight.T,
            at + "mlp.c_fc.bias": block.mlp.up.bias,
            at + "mlp.c_proj.weight": block.mlp.down.weight.T,
            at + "mlp.c_proj.bias": block.mlp.down.bias,
        }
    return {name: t.detach().contiguous().clone() for name, t in state.items()}


def gpt2_config(model: AttentionLM):  # noqa: ANN201 (transformers is imported here, at export time only)
    from transformers import GPT2Config

    cfg = model.cfg
    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.context_length,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.d_model,
        # exact (erf) GELU, F.gelu's default, or GPT-2's own tanh form for a model imported from it
        activation_function="gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=cfg.layer_norm_eps,
        scale_attn_weights=True,
        tie_word_embeddings=False,
        # The tokenizer has no special tokens: nothing marks a text's start or end.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        architectures=["GPT2LMHeadModel"],
    )


def write_checkpoint(bundle_dir: Path, out: Path) -> None:
    """The bundle's model as a transformers directory in `out` (a fresh directory)."""
    from transformers import GPT2LMHeadModel

    model = load_torch_model(bundle_dir)
    hf = GPT2LMHeadModel(gpt2_config(model)).eval()
    missing, unexpected = hf.load_state_dict(gpt2_state(model), strict=False)
    # Only buffers that GPT-2 computes itself may be left to it (none are expected).
    if unexpected or [m for m in missing if not m.endswith(".attn.bias") and not m.endswith("masked_bias")]:
        raise RuntimeError(f"weights do not map onto GPT-2: missing {missing}, unexpected {unexpected}")
    hf.save_pretrained(out, safe_serialization=True)
    shutil.copyfile(bundle_dir / TOKENIZER_FILE, out / "tokenizer.json")
    context = model.cfg.context_length
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text("{}\n")
    log.info("wrote %s: GPT2LMHeadModel, %d layers x %d heads, width %d", out, model.cfg.n_layer, model.cfg.n_head,
             model.cfg.d_model)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m export.hf", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/attnserve-shakespeare/1"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    with staged(args.out) as staging:  # written beside --out, then put in its place
        write_checkpoint(args.bundle, staging)
    return 0


if __name__ == "__main__":
    sys.exit(main())
