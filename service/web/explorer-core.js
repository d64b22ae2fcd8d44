// The attention explorer: plain JavaScript, no library, no request to anything but this service.
// Attention comes from the KServe v2 route as binary float32 (8 MB for a full context, where JSON
// would be about 20 MB of text to parse); scores from /v1/score, the next tokens from /v1/next-token,
// and generation from /v1/completions, streamed, with the attention extension.
// The state, the API and the page: explorer-core.js, the first of five plain scripts that share the
// page's globals (then explorer-draw.js, explorer-interpret.js, explorer-intervene.js and explorer.js,
// which starts the page).
"use strict";

const $ = (id) => document.getElementById(id);
const SAMPLES = [
  "ROMEO:\nBut soft, what light through yonder window breaks?",
  "To be, or not to be, that is the question:",
  "First Citizen:\nBefore we proceed any further, hear me speak.",
  "KING RICHARD II:\nNo matter where; of comfort no man speak:",
];
// One colour per head, distinct in light and dark mode (Tableau 10).
const HEAD_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f", "#bab0ac"];
const VIEWS = ["head", "model", "heatmap", "rollout", "generate", "lens", "importance", "patch", "attribution"];
const EXPLAIN = {
  head: "Lines from each token (left) to the tokens it attends to (right), one colour per head; a line's strength is its weight. Hover over a token, or use the arrow keys, to see only its lines.",
  model: "Every layer × head as a small query × key heatmap (rows: queries, columns: keys; colour: the square root of the weight). Click one, or move with the arrow keys and press Enter, to open it large.",
  heatmap: "Query (row) × key (column) weights of one layer and head, or their mean over heads (colour: the square root of the weight). Keys after the query are masked by the causal mask and left blank. Hover, or use the arrow keys, for the exact float32 value.",
  rollout: "Attention rollout: each layer's head-averaged attention, plus the identity for the residual path, multiplied from the first layer up, estimates how much each position draws on each input token overall (Abnar and Zuidema, 2020).",
  generate: "Generate tokens (greedy, streamed), then step through them: each new token's attention over its context, in the chosen layer, for the chosen head or the mean over heads. With a text to add (and one to subtract), the plain and the steered continuations are shown side by side.",
  lens: "The logit lens: what each layer predicts. Rows: the residual stream after the embeddings (top) and after each block, read through the final LayerNorm and the unembedding; columns: positions. Each cell is the most likely next token, coloured by its probability; hover for the top 5.",
  importance: "Head importance: for each layer (row) and head (column), the change in the mean log-probability of each next token when that head alone is switched off. Red: the model needs the head. Hover for the exact value; click a head to ablate it.",
  patch: "Activation patching: the text above is the clean run; type a corrupted one of the same token count. Each cell puts one clean activation into the corrupted run (denoise) or the reverse (noise) and scores the answer's logit difference: 0 is the corrupted run's, 1 the clean run's. Top: each head's output; below: the chosen site at each layer and position. Click a cell for its numbers.",
  attribution: "Direct logit attribution: the top next token's logit split into what the embeddings, each head, each MLP and the biases wrote into the residual stream, through the final LayerNorm with its scale frozen. Hover a bar for its value.",
};

const state = { text: "", layer: 0, head: 0, view: "head", hidden: new Set(), ablate: new Set() }; // ablate: "l.h"
let model = null; // {id, n_layer, n_head, context_length}
let data = null; // the last run: tokens, ids, logprobs, next tokens, and maps: layer * H + head -> its n x n weights
let gen = null; // the last generation: prompt tokens and one step per generated token
let hover = null; // the row (head view), cell (heatmap, rollout) or map (model view) under the pointer or cursor
let rollout = null;

class ApiError extends Error {}

// -- numbers -------------------------------------------------------------------------------------

// The shortest decimal that reads back as the same float32: what numpy and the JSON API print.
function f32(x) {
  for (let p = 1; p <= 9; p++) {
    const s = Number(x.toPrecision(p));
    if (Math.fround(s) === x) return String(s);
  }
  return String(x);
}

function hexRgb(hex) {
  const v = parseInt(hex.trim().slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

function cssColour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function ramp() {
  const lo = hexRgb(cssColour("--heat-low"));
  const hi = hexRgb(cssColour("--heat-high"));
  return (t) => lo.map((c, i) => Math.round(c + (hi[i] - c) * Math.min(1, Math.max(0, t))));
}

// Readable byte-level pieces: a space as a middle dot, a newline as a return arrow.
function readable(token) {
  return token.replace(/ /g, "·").replace(/\n/g, "↵").replace(/\t/g, "→");
}

// Every map comes with the run while they all fit in this many weights (16 MB of float32: a
// 12 x 12-head model at 166 tokens). Past it (GPT-2 small at 1024 tokens holds 604 MB of maps) the
// page asks for the maps a view shows, when it shows them, and keeps them for the text.
const EAGER_WEIGHTS = 4_000_000;
// A lazy request's maps, at most: one head at a time at 1024 tokens, so that the server holds the
// maps asked for plus one layer's under its default MAX_ATTENTION_COMPUTE.
const MAP_WEIGHTS_PER_REQUEST = 1_100_000;

function eager(n) {
  return model.n_layer * model.n_head * n * n <= EAGER_WEIGHTS;
}

function weight(l, h, q, k) {
  return data.maps.get(l * model.n_head + h)[q * data.n + k];
}

function hasMap(l, h) {
  return data.maps.has(l * model.n_head + h);
}

function meanOverHeads(l, q, k) {
  let s = 0;
  for (let h = 0; h < model.n_head; h++) s += weight(l, h, q, k);
  return s / model.n_head;
}

// -- the API -------------------------------------------------------------------------------------

async function api(path, body) {
  const headers = body === undefined ? {} : { "Content-Type": "application/json" };
  const key = sessionStorage.getItem("attnserve-key");
  if (key) headers.Authorization = `Bearer ${key}`; // a server with API_KEYS set asks for one
  const init = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  const r = await fetch(path, init);
  if (r.status === 401) $("key-row").hidden = false;
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try {
      const e = (await r.json()).error;
      message = typeof e === "string" ? e : e.message; // KServe v2's shape, or the native and OpenAI shapes
    } catch (_) { /* not JSON: keep the status line */ }
    throw new ApiError(message);
  }
  return r;
}

// The ablated heads, as the native routes take them ([[layer, head], ...]) and as v2's "0.2,1.3".
function ablatePairs() {
  return [...state.ablate].map((s) => s.split(".").map(Number));
}

// Maps from the v2 attention job, in binary: every map, or those of `heads` in `layer`.
async function fetchMaps(text, layer, heads) {
  const parameters = state.ablate.size ? { ablate: [...state.ablate].join(",") } : {};
  if (heads) Object.assign(parameters, { layers: String(layer), heads: heads.join(",") });
  const r = await api(`/v2/models/${encodeURIComponent(model.id)}.attention/infer`, {
    inputs: [{ name: "text", shape: [1], datatype: "BYTES", data: [text] }],
    outputs: [{ name: "attention_weights", parameters: { binary_data: true } }],
    parameters,
  });
  const length = Number(r.headers.get("Inference-Header-Content-Length"));
  const body = await r.arrayBuffer();
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(body, 0, length)));
  const [, layers, perLayer, n] = header.outputs[0].shape; // [1, layers, heads, n, n]
  const all = new Float32Array(body.slice(length));
  const maps = new Map();
  for (let i = 0; i < layers * perLayer; i++) {
    const l = heads ? layer : Math.floor(i / perLayer);
    const h = heads ? heads[i] : i % perLayer;
    maps.set(l * model.n_head + h, all.subarray(i * n * n, (i + 1) * n * n));
  }
  return maps;
}

// The maps the current view draws: a layer's heads, one head, or (rollout, the model view) all.
function neededMaps() {
  const heads = [...Array(model.n_head).keys()];
  const layers = [...Array(model.n_layer).keys()];
  if (state.view === "head") return heads.filter((h) => !state.hidden.has(h)).map((h) => [state.layer, h]);
  if (state.view === "heatmap") return state.head === "mean" ? heads.map((h) => [state.layer, h]) : [[state.layer, state.head]];
  if (state.view === "rollout" && eager(data.n)) return layers.flatMap((l) => heads.map((h) => [l, h]));
  return [];
}

let loading = null; // the lazy request under way, if any

// Fetches the maps the view needs and does not have yet, a few heads of one layer per request,
// then draws again. Returns true if the view can draw now.
function mapsReady() {
  const missing = neededMaps().filter(([l, h]) => !hasMap(l, h));
  if (missing.length === 0) return true;
  if (!loading) {
    const text = data.text;
    const per = Math.max(1, Math.floor(MAP_WEIGHTS_PER_REQUEST / (data.n * data.n)));
    const requests = []; // [layer, heads]: a request asks for heads of one layer
    for (const [l, h] of missing) {
      const last = requests[requests.length - 1];
      if (last && last[0] === l && last[1].length < per) last[1].push(h);
      else requests.push([l, [h]]);
    }
    loading = (async () => {
      for (const [l, heads] of requests) {
        const maps = await fetchMaps(text, l, heads);
        if (data.text !== text) return; // a new run replaced the text meanwhile
        for (const [key, m] of maps) data.maps.set(key, m);
      }
    })().then(
      () => { loading = null; draw(); setStatus("ready"); },
      (e) => { loading = null; showError(e); }, // no redraw: it would ask again, and fail again
    );
    setStatus("busy");
  }
  return false;
}

async function run() {
  state.text = $("text").value;
  if (!state.text) return;
  saveUrl();
  setStatus("busy");
  hideError();
  try {
    const ablate = ablatePairs();
    const body = { model: model.id, texts: [state.text], ablate };
    const scored = api("/v1/score", body).then((r) => r.json());
    // A text has at most as many tokens as UTF-8 bytes: short ones fetch every map beside the rest;
    // longer ones learn their length first.
    const bytes = new TextEncoder().encode(state.text).length;
    const [score, next, maps, lens, plain] = await Promise.all([
      scored,
      api("/v1/next-token", { ...body, top_k: 8 }).then((r) => r.json()),
      eager(bytes) ? fetchMaps(state.text) : scored.then((sc) => (eager(sc.results[0].tokens.length) ? fetchMaps(state.text) : new Map())),
      api("/v1/logit-lens", { ...body, top_k: 5 }).then((r) => r.json()),
      // With heads ablated, the plain answer too, to show what the ablation changed.
      ablate.length ? api("/v1/next-token", { model: model.id, texts: [state.text], top_k: 8 }).then((r) => r.json()) : null,
    ]);
    const s = score.results[0];
    data = {
      text: state.text, tokens: s.tokens, ids: s.token_ids, logprobs: s.logprobs, next: next.results[0].top,
      lens: lens.results[0].lens, plainNext: plain ? plain.results[0].top : null, importance: null,
      attribution: null, patch: null, n: s.tokens.length, maps,
    };
    rollout = null;
    gen = null;
    hover = null;
    renderTokens();
    renderAblation();
    if (state.view === "importance") await fetchImportance();
    if (state.view === "attribution") await fetchAttribution();
    if (state.view === "patch") await fetchPatch();
    draw();
    setStatus("ready");
  } catch (e) {
    showError(e);
  }
}

async function fetchImportance() {
  if (data.importance || data.tokens.length < 2) return;
  const r = await api("/v1/head-importance", { model: model.id, texts: [data.text] });
  data.importance = (await r.json()).results[0].importance; // [layer][head]
}

// What the ablation changed: the top next token's probability with every head on, and now.
function renderAblation() {
  const box = $("ablation-change");
  box.hidden = !data.plainNext;
  if (!data.plainNext) return;
  const top = data.plainNext[0];
  const now = data.next.find((t) => t.token_id === top.token_id);
  const p = now ? `${(now.prob * 100).toFixed(1)}%` : "below the top 8";
  box.textContent = `Ablated ${[...state.ablate].join(", ")}: p(${readable(top.token)}) was ${(top.prob * 100).toFixed(1)}%, now ${p}; the top token is now ${readable(data.next[0].token)}.`;
}

async function generate() {
  if (!data || data.text !== $("text").value) await run();
  if (!data) return;
  const n = Number($("gen-n").value);
  const steps = [];
  gen = { layer: state.layer, prompt: data.tokens.slice(), steps };
  setStatus("busy");
  hideError();
  try {
    const steering = steeredContinuations(n);
    const r = await api("/v1/completions", {
      model: model.id, prompt: data.text, max_tokens: n, temperature: 0, stream: true, logprobs: 0,
      attention: { layers: [state.layer] },
    });
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
        const chunk = JSON.parse(event.slice(6));
        if (chunk.error) throw new ApiError(chunk.error.message);
        const choice = chunk.choices[0];
        if (!choice || !choice.logprobs) continue;
        steps.push({ token: choice.logprobs.tokens[0], attention: choice.attention[0] }); // [head][key]
        const slider = $("step");
        slider.max = String(steps.length - 1);
        slider.disabled = false;
        slider.value = String(steps.length - 1);
        draw();
      }
    }
    await steering;
    setStatus("ready");
  } catch (e) {
    showError(e);
  }
}

// -- page state ----------------------------------------------------------------------------------

function saveUrl() {
  const p = new URLSearchParams({ model: model.id, text: state.text, layer: state.layer, head: state.head, view: state.view });
  if (state.ablate.size) p.set("ablate", [...state.ablate].join(","));
  history.replaceState(null, "", `${location.pathname}?${p}`);
  $("compare-link").href = `compare.html?${new URLSearchParams({ left: model.id, text: state.text, view: state.view })}`;
}

function loadUrl() {
  const p = new URLSearchParams(location.search);
  state.text = p.get("text") || SAMPLES[0];
  state.layer = clampInt(p.get("layer"), 0, model.n_layer - 1);
  state.head = p.get("head") === "mean" ? "mean" : clampInt(p.get("head"), 0, model.n_head - 1);
  state.view = VIEWS.includes(p.get("view")) ? p.get("view") : "head";
  state.ablate = new Set((p.get("ablate") || "").split(",").filter((s) => {
    const [l, h] = s.split(".").map(Number);
    return Number.isInteger(l) && Number.isInteger(h) && l >= 0 && h >= 0 && l < model.n_layer && h < model.n_head;
  }));
}

function clampInt(s, lo, hi) {
  const v = Number.parseInt(s || "0", 10);
  return Number.isFinite(v) ? Math.min(hi, Math.max(lo, v)) : lo;
}

function setStatus(s) {
  if (s === "ready" && loading) s = "busy"; // a view's maps are still on their way
  document.body.dataset.status = s;
  $("run").disabled = s === "busy";
  $("generate").disabled = s === "busy";
}

function showError(e) {
  const box = $("error");
  box.textContent = e instanceof ApiError ? e.message : `the page failed: ${e.message}`;
  box.hidden = false;
  setStatus("error");
  if (!(e instanceof ApiError)) console.error(e);
}

function hideError() {
  $("error").hidden = true;
}

// -- the token strip -----------------------------------------------------------------------------

function surprisalColour(s) {
  const t = Math.min(1, s / 10); // 0 nats (certain) to 10 nats (about 1 in 22,000)
  return `hsl(${50 - 50 * t}, 95%, ${88 - 30 * t}%)`;
}

function renderTokens() {
  const box = $("tokens");
  box.replaceChildren();
  data.tokens.forEach((tok, i) => {
    const span = document.createElement("span");
    span.textContent = readable(tok);
    const lp = data.logprobs[i];
    span.style.background = lp === null ? cssColour("--masked") : surprisalColour(-lp);
    if (lp === null) span.style.color = cssColour("--fg"); // the surprisal colours are light in both schemes
    span.title = lp === null ? `#${i} id ${data.ids[i]}: the first token, no context`
      : `#${i} id ${data.ids[i]}: surprisal ${(-lp).toFixed(3)} nats, p = ${Math.exp(lp).toPrecision(3)}`;
    box.append(span);
  });
  const next = $("next");
  next.replaceChildren("Next: ");
  for (const t of data.next) {
    const chip = document.createElement("span");
    chip.textContent = `${readable(t.token)} ${(t.prob * 100).toFixed(1)}%`;
    next.append(chip);
  }
}
