"""The report's sections on the model's internals: the interpretability routes, the interventions
and an imported GPT-2-sized checkpoint, with the interventions' targets."""

from __future__ import annotations

from benchmarks.timing import verdict


def interpretability_report(results: dict) -> list[str]:
    r = results.get("interpretability")
    if not r:
        return []
    out = [
        "## The logit lens and head importance",
        "",
        f"One client, one server (the committed Shakespeare model: 4 layers x 8 heads), one text of {r['tokens']} "
        "tokens, median of 5 after a warm-up, from the request to the parsed answer. `/v1/head-importance` runs the "
        "score graph on 33 rows (each head ablated in turn, and none) in shared batches.",
        "",
        "| route | ms |",
        "|---|---|",
    ]
    out += [f"| `{name}` | {ms:.1f} |" for name, ms in r.items() if name != "tokens"]
    return [*out, ""]


def interventions_report(results: dict) -> list[str]:
    r = results.get("interventions")
    if not r:
        return []
    sweep, steering, acts = r["sweep"], r["steering"], r["activations"]
    seconds = sweep["sweep_ms"] / 1000
    out = [
        "## Interventions: patching, steering, activations",
        "",
        f"**A full patching sweep** through `POST /v1/patch` on the committed Shakespeare model: a "
        f"{sweep['tokens']}-token pair differing at one position, every head plus `resid_pre`, `attn_out` and "
        f"`mlp_out` at every layer and position ({sweep['cells']} cells), median of 5 after a warm-up: "
        f"**{seconds:.2f} s** (target <= 1.2 s on this 2-core machine: {verdict(seconds <= 1.2)}). Against one "
        f"request per variant, which costs at least a full forward each ({sweep['cells']} `/v1/next-token` "
        f"requests of the same {sweep['tokens']} tokens, one after another): "
        f"{sweep['one_request_per_variant_ms'] / 1000:.2f} s. Against TransformerLens's way, one eager PyTorch "
        f"forward per variant with a hook, in process on the same weights (no HTTP): "
        f"{sweep['eager_hooks_s']:.2f} s. The cells run as rows of the resume graph, which starts each row at its "
        "patch and computes only the blocks above it.",
        "",
        "**Steering's decode cost**: greedy completions of 128 tokens through `/v1/completions`, every stream "
        "steered (one vector at layer 1, sent as numbers) against none, after a warm-up round of each, best of "
        "three alternating rounds each. "
        "Target: at most 5% at 32 streams.",
        "",
        "| streams | plain tokens/s | steered tokens/s | cost |",
        "|---|---|---|---|",
    ]
    for streams, p in steering.items():
        cost = 1 - p["steered_tokens_per_s"] / p["plain_tokens_per_s"]
        out.append(f"| {streams} | {p['plain_tokens_per_s']:.0f} | {p['steered_tokens_per_s']:.0f} | {cost:+.1%} |")
    worst = 1 - steering["32"]["steered_tokens_per_s"] / steering["32"]["plain_tokens_per_s"]
    out += [
        "",
        f"At 32 streams: {worst:+.1%}, {verdict(worst <= 0.05)}. A negative cost is a steered round that ran "
        "faster: the graphs do the same work for a steered and a plain row (the steering input is added either "
        "way), so what differs between the columns is run-to-run noise.",
        "",
        f"**Activations** (`POST /v1/activations`, one {sweep['tokens']}-token text, median of 5):",
        "",
        "| asked | answer bytes | ms |",
        "|---|---|---|",
    ]
    out += [f"| {label} | {a['bytes']:,} | {a['ms']:.1f} |" for label, a in acts.items()]
    return [*out, ""]


def gpt2_small_report(results: dict) -> list[str]:
    r = results.get("gpt2_small")
    if not r:
        return []
    parity = ", ".join(f"{k} {v:.1e}" for k, v in r["transformers_parity"].items())
    out = [
        "## GPT-2 small's shapes: an imported checkpoint",
        "",
        f"`GPT2LMHeadModel(GPT2Config())` (12 layers x 12 heads, width 768, context 1024; {r['vocab']:,} tokens, "
        "the byte-level BPE trained here, since no weights can be downloaded), seeded random weights, saved as a "
        f"user's checkpoint and imported with `python -m export.hf_import` in {r['import_s']:.0f} s (checked against "
        f"transformers' forward, worst differences: {parity}; every graph exported and verified). Served from "
        f"the repository: ready {r['load_s']:.1f} s after start, {r['resident_bytes'] / 1e6:.0f} MB resident"
        + (f" for a {r['bundle_bytes'] / 1e6:.0f} MB bundle." if "bundle_bytes" in r else "."),
        "",
        "| next-token: rows x tokens | ms | tokens/s |",
        "|---|---|---|",
    ]
    out += [
        f"| {p['rows']} x {p['tokens']} | {p['ms']:.0f} | {p['rows'] * p['tokens'] / p['ms'] * 1000:.0f} |"
        for p in r["next_token"]
    ]
    out += ["", "| generation streams | tokens/s |", "|---|---|"]
    out += [f"| {streams} | {rate:.0f} |" for streams, rate in r["generation"].items()]
    out += ["", "| attention at 1024 tokens | status | answer bytes | ms |", "|---|---|---|---|"]
    out += [f"| {label} | {a['status']} | {a['bytes']:,} | {a['ms']:.0f} |" for label, a in r["attention"].items()]
    out += [
        "",
        "The attention graph computes every map (a layer's output needs all its heads) but returns only those asked "
        "for, each layer's picked before the next layer runs: one head at 1024 tokens holds 13 maps of a million "
        "weights (its own and one layer's), within the default `MAX_ATTENTION_COMPUTE` (16M), while all 144 hold "
        "156 and need the limits raised, as the benchmark does for that row.",
        "",
    ]
    if "memory" in r:
        m = r["memory"]
        out += [
            f"Memory once ready, from `/proc/<pid>/smaps_rollup`: RSS {m['rss'] / 1e9:.2f} GB, PSS "
            f"{m['pss'] / 1e9:.2f} GB, of which anonymous {m['anonymous'] / 1e9:.2f} GB: nearly all of it is the "
            "process's own, not the mapped weights file. It is each graph session's pre-packed copy of its MatMul "
            "weights (ONNX Runtime's default, made when the session opens: a copy of the weights per graph) and what "
            "the start-up warm-up at the full context leaves in the arenas (the prefill graph's peak above all; "
            "attention now warms up with one map, which took 0.6 GB off). Pre-packing only the hot graphs, or "
            "sharing one pre-packed copy between sessions, is the open fix.",
            "",
        ]
    return out


def interventions_target_rows(results: dict) -> list[str]:
    r = results.get("interventions")
    if not r:
        return []
    seconds = r["sweep"]["sweep_ms"] / 1000
    at32 = r["steering"]["32"]
    cost = 1 - at32["steered_tokens_per_s"] / at32["plain_tokens_per_s"]
    return [
        f"| a full patching sweep ({r['sweep']['cells']} cells, {r['sweep']['tokens']} tokens) through HTTP "
        f"<= 1.2 s | {seconds:.2f} s | {verdict(seconds <= 1.2)} |",
        f"| steering costs <= 5% of decode throughput at 32 streams | {cost:+.1%} | {verdict(cost <= 0.05)} |",
    ]
