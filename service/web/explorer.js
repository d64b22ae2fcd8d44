// The attention explorer: plain JavaScript, no library, no request to anything but this service.
// Attention comes from the KServe v2 route as binary float32 (8 MB for a full context, where JSON
// would be about 20 MB of text to parse); scores from /v1/score, the next tokens from /v1/next-token,
// and generation from /v1/completions, streamed, with the attention extension.
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
const VIEWS = ["head", "model", "heatmap", "rollout", "generate", "lens", "importance"];
const EXPLAIN = {
  head: "Lines from each token (left) to the tokens it attends to (right), one colour per head; a line's strength is its weight. Hover over a token, or use the arrow keys, to see only its lines.",
  model: "Every layer × head as a small query × key heatmap (rows: queries, columns: keys; colour: the square root of the weight). Click one, or move with the arrow keys and press Enter, to open it large.",
  heatmap: "Query (row) × key (column) weights of one layer and head, or their mean over heads (colour: the square root of the weight). Keys after the query are masked by the causal mask and left blank. Hover, or use the arrow keys, for the exact float32 value.",
  rollout: "Attention rollout: each layer's head-averaged attention, plus the identity for the residual path, multiplied from the first layer up, estimates how much each position draws on each input token overall (Abnar and Zuidema, 2020).",
  generate: "Generate tokens (greedy, streamed), then step through them: each new token's attention over its context, in the chosen layer, for the chosen head or the mean over heads.",
  lens: "The logit lens: what each layer predicts. Rows: the residual stream after the embeddings (top) and after each block, read through the final LayerNorm and the unembedding; columns: positions. Each cell is the most likely next token, coloured by its probability; hover for the top 5.",
  importance: "Head importance: for each layer (row) and head (column), the change in the mean log-probability of each next token when that head alone is switched off. Red: the model needs the head. Hover for the exact value; click a head to ablate it.",
};

const state = { text: "", layer: 0, head: 0, view: "head", hidden: new Set(), ablate: new Set() }; // ablate: "l.h"
let model = null; // {id, n_layer, n_head, context_length}
let data = null; // the last run: tokens, ids, logprobs, next tokens, attention [L][H][n][n] as one Float32Array
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

function weight(l, h, q, k) {
  const n = data.n;
  return data.attention[((l * model.n_head + h) * n + q) * n + k];
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

async function fetchAttention(text) {
  const parameters = state.ablate.size ? { ablate: [...state.ablate].join(",") } : {};
  const r = await api(`/v2/models/${encodeURIComponent(model.id)}.attention/infer`, {
    inputs: [{ name: "text", shape: [1], datatype: "BYTES", data: [text] }],
    outputs: [{ name: "attention_weights", parameters: { binary_data: true } }],
    parameters,
  });
  const length = Number(r.headers.get("Inference-Header-Content-Length"));
  const body = await r.arrayBuffer();
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(body, 0, length)));
  const shape = header.outputs[0].shape; // [1, layers, heads, n, n]
  return { n: shape[3], attention: new Float32Array(body.slice(length)) };
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
    const [score, next, att, lens, plain] = await Promise.all([
      api("/v1/score", body).then((r) => r.json()),
      api("/v1/next-token", { ...body, top_k: 8 }).then((r) => r.json()),
      fetchAttention(state.text),
      api("/v1/logit-lens", { ...body, top_k: 5 }).then((r) => r.json()),
      // With heads ablated, the plain answer too, to show what the ablation changed.
      ablate.length ? api("/v1/next-token", { model: model.id, texts: [state.text], top_k: 8 }).then((r) => r.json()) : null,
    ]);
    const s = score.results[0];
    data = {
      text: state.text, tokens: s.tokens, ids: s.token_ids, logprobs: s.logprobs, next: next.results[0].top,
      lens: lens.results[0].lens, plainNext: plain ? plain.results[0].top : null, importance: null, ...att,
    };
    rollout = null;
    gen = null;
    hover = null;
    renderTokens();
    renderAblation();
    if (state.view === "importance") await fetchImportance();
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

// -- drawing -------------------------------------------------------------------------------------

const canvas = $("canvas");
const ctx = canvas.getContext("2d");

function resize(w, h) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.ceil(w * dpr);
  canvas.height = Math.ceil(h * dpr);
  canvas.style.width = `${w}px`;
  canvas.style.height = `${h}px`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = cssColour("--bg");
  ctx.fillRect(0, 0, w, h);
}

function draw() {
  for (const b of document.querySelectorAll("#views [role=tab]")) {
    b.setAttribute("aria-selected", String(b.dataset.view === state.view));
  }
  $("explain").textContent = EXPLAIN[state.view];
  $("head-toggles").hidden = state.view !== "head";
  $("generate-controls").hidden = state.view !== "generate";
  $("gen-tokens").hidden = state.view !== "generate";
  $("layer").value = String(state.layer);
  $("head").value = String(state.head);
  if (!data) return;
  const started = performance.now();
  ({
    head: drawHeadView, model: drawModelView, heatmap: drawHeatmap, rollout: drawRollout, generate: drawGeneration,
    lens: drawLens, importance: drawImportance,
  })[state.view]();
  canvas.dataset.view = state.view;
  canvas.dataset.renderMs = (performance.now() - started).toFixed(1);
}

function headColour(h) {
  return HEAD_COLOURS[h % HEAD_COLOURS.length];
}

const ROW = 18;
const HEAD_VIEW = { width: 720, column: 180, top: 8 };

function drawHeadView() {
  const n = data.n;
  const { width, column, top } = HEAD_VIEW;
  resize(width, top * 2 + n * ROW);
  const xLeft = column;
  const xRight = width - column;
  const only = hover && hover.kind === "row" ? hover : null;
  ctx.lineWidth = 2;
  for (let h = 0; h < model.n_head; h++) {
    if (state.hidden.has(h)) continue;
    ctx.strokeStyle = headColour(h);
    for (let q = 0; q < n; q++) {
      if (only && only.side === "query" && only.index !== q) continue;
      for (let k = 0; k <= q; k++) {
        if (only && only.side === "key" && only.index !== k) continue;
        const w = weight(state.layer, h, q, k);
        if (w < 0.01) continue; // invisible at this strength; skipping keeps 256 tokens fast
        ctx.globalAlpha = Math.min(1, w);
        ctx.beginPath();
        ctx.moveTo(xLeft + 6, top + q * ROW + ROW / 2);
        ctx.lineTo(xRight - 6, top + k * ROW + ROW / 2);
        ctx.stroke();
      }
    }
  }
  ctx.globalAlpha = 1;
  ctx.font = "13px ui-monospace, monospace";
  ctx.textBaseline = "middle";
  for (let i = 0; i < n; i++) {
    const y = top + i * ROW + ROW / 2;
    const label = readable(data.tokens[i]);
    for (const [side, x, align] of [["query", xLeft, "right"], ["key", xRight, "left"]]) {
      const lit = only && only.side === side && only.index === i;
      ctx.fillStyle = lit ? cssColour("--accent") : cssColour("--fg");
      ctx.textAlign = align;
      ctx.fillText(label, x, y, column - 12);
    }
  }
}

function headViewRow(x, y) {
  const i = Math.floor((y - HEAD_VIEW.top) / ROW);
  if (i < 0 || i >= data.n) return null;
  if (x < HEAD_VIEW.column + 6) return { kind: "row", side: "query", index: i };
  if (x > HEAD_VIEW.width - HEAD_VIEW.column - 6) return { kind: "row", side: "key", index: i };
  return null;
}

// 256 colours of the current ramp, so that a map's pixels are table look-ups.
function rampTable() {
  const rgb = ramp();
  const table = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) table.set(rgb(i / 255), i * 3);
  return table;
}

function mapImage(values, n, table) {
  // One pixel per cell at n x n, scaled up by the canvas: a full 256-token map costs one putImageData.
  const image = new ImageData(n, n);
  const px = image.data;
  const [mr, mg, mb] = hexRgb(cssColour("--bg"));
  for (let q = 0; q < n; q++) {
    for (let k = 0; k < n; k++) {
      const o = (q * n + k) * 4;
      if (k > q) {
        px[o] = mr;
        px[o + 1] = mg;
        px[o + 2] = mb;
      } else {
        // The square root spreads the small weights of long contexts over more of the ramp.
        const t = Math.min(255, Math.max(0, Math.round(Math.sqrt(values(q, k)) * 255))) * 3;
        px[o] = table[t];
        px[o + 1] = table[t + 1];
        px[o + 2] = table[t + 2];
      }
      px[o + 3] = 255;
    }
  }
  const off = document.createElement("canvas");
  off.width = n;
  off.height = n;
  off.getContext("2d").putImageData(image, 0, 0);
  return off;
}

const GRID = { label: 28, gap: 8 };

function modelCell() {
  return Math.max(48, Math.min(120, Math.floor((1000 - GRID.label) / model.n_head) - GRID.gap));
}

function drawModelView() {
  const n = data.n;
  const cell = modelCell();
  const step = cell + GRID.gap;
  resize(GRID.label + model.n_head * step, GRID.label + model.n_layer * step);
  const table = rampTable();
  ctx.imageSmoothingEnabled = false;
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = cssColour("--muted");
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (let h = 0; h < model.n_head; h++) ctx.fillText(`head ${h}`, GRID.label + h * step + cell / 2, GRID.label / 2);
  for (let l = 0; l < model.n_layer; l++) {
    ctx.save();
    ctx.translate(GRID.label / 2, GRID.label + l * step + cell / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillStyle = cssColour("--muted");
    ctx.fillText(`layer ${l}`, 0, 0);
    ctx.restore();
    for (let h = 0; h < model.n_head; h++) {
      const x = GRID.label + h * step;
      const y = GRID.label + l * step;
      const base = (l * model.n_head + h) * n * n;
      ctx.drawImage(mapImage((q, k) => data.attention[base + q * n + k], n, table), x, y, cell, cell);
      const picked = hover && hover.kind === "map" ? hover.layer === l && hover.head === h
        : state.layer === l && state.head === h;
      ctx.strokeStyle = picked ? cssColour("--accent") : cssColour("--border");
      ctx.lineWidth = picked ? 3 : 1;
      ctx.strokeRect(x - 0.5, y - 0.5, cell + 1, cell + 1);
    }
  }
}

function modelViewMap(x, y) {
  const step = modelCell() + GRID.gap;
  const h = Math.floor((x - GRID.label) / step);
  const l = Math.floor((y - GRID.label) / step);
  if (h < 0 || l < 0 || h >= model.n_head || l >= model.n_layer) return null;
  return { kind: "map", layer: l, head: h };
}

const HEAT = { label: 110, top: 110 };

function heatCell() {
  return Math.max(2, Math.min(28, Math.floor(720 / data.n)));
}

function drawMatrix(values, title) {
  const n = data.n;
  const cell = heatCell();
  const labels = cell >= 12;
  const left = labels ? HEAT.label : 8;
  const top = labels ? HEAT.top : 24;
  resize(left + n * cell + 8, top + n * cell + 8);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(mapImage(values, n, rampTable()), left, top, n * cell, n * cell);
  ctx.fillStyle = cssColour("--fg");
  ctx.font = "12px system-ui, sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  ctx.fillText(title, 4, 4);
  if (labels) {
    ctx.font = "12px ui-monospace, monospace";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let i = 0; i < n; i++) ctx.fillText(readable(data.tokens[i]), left - 4, top + i * cell + cell / 2, left - 8);
    for (let i = 0; i < n; i++) {
      ctx.save();
      ctx.translate(left + i * cell + cell / 2, top - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(readable(data.tokens[i]), 0, 0, HEAT.top - 28);
      ctx.restore();
    }
  }
  if (hover && hover.kind === "cell") {
    ctx.strokeStyle = cssColour("--accent");
    ctx.lineWidth = 2;
    ctx.strokeRect(left + hover.k * cell, top + hover.q * cell, cell, cell);
  }
  canvas.dataset.cell = String(cell);
  canvas.dataset.left = String(left);
  canvas.dataset.top = String(top);
}

function heatValue(q, k) {
  return state.head === "mean" ? meanOverHeads(state.layer, q, k) : weight(state.layer, state.head, q, k);
}

function drawHeatmap() {
  const which = state.head === "mean" ? "mean over heads" : `head ${state.head}`;
  drawMatrix(heatValue, `layer ${state.layer}, ${which}: query (row) × key (column)`);
}

function computeRollout() {
  const n = data.n;
  let r = new Float64Array(n * n);
  for (let i = 0; i < n; i++) r[i * n + i] = 1;
  for (let l = 0; l < model.n_layer; l++) {
    const a = new Float64Array(n * n);
    for (let q = 0; q < n; q++) {
      for (let k = 0; k <= q; k++) a[q * n + k] = 0.5 * meanOverHeads(l, q, k) + (q === k ? 0.5 : 0);
    }
    const next = new Float64Array(n * n);
    for (let q = 0; q < n; q++) {
      for (let m = 0; m <= q; m++) {
        const w = a[q * n + m];
        if (w === 0) continue;
        for (let k = 0; k <= m; k++) next[q * n + k] += w * r[m * n + k];
      }
    }
    r = next;
  }
  return r;
}

function rolloutValue(q, k) {
  return rollout[q * data.n + k];
}

function drawRollout() {
  if (!rollout) rollout = computeRollout();
  drawMatrix(rolloutValue, `attention rollout over ${model.n_layer} layers (mean over heads, plus the residual)`);
}

// -- the logit lens and head importance ------------------------------------------------------------

const LENS = { label: 90, top: 24, row: 26 };

function lensCell() {
  return Math.max(8, Math.min(72, Math.floor(720 / data.n)));
}

function drawLens() {
  const n = data.n;
  const depth = data.lens.length;
  const cell = lensCell();
  resize(LENS.label + n * cell + 8, LENS.top + depth * LENS.row + 8);
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.fillStyle = cssColour("--fg");
  ctx.textAlign = "left";
  ctx.fillText("the most likely next token at each depth (rows) and position (columns)", 4, 12);
  for (let d = 0; d < depth; d++) {
    const y = LENS.top + d * LENS.row;
    ctx.fillStyle = cssColour("--fg");
    ctx.textAlign = "right";
    ctx.fillText(d === 0 ? "embeddings" : d === depth - 1 ? `output (${d})` : `block ${d}`, LENS.label - 6, y + LENS.row / 2);
    for (let p = 0; p < n; p++) {
      const top = data.lens[d][p][0];
      ctx.fillStyle = surprisalColour(-Math.log(top.prob) * 2); // certain: pale; unsure: deep
      ctx.fillRect(LENS.label + p * cell, y, cell - 1, LENS.row - 1);
      if (cell >= 40) {
        ctx.fillStyle = "#1b1f24"; // the cell colours are light in both schemes
        ctx.textAlign = "center";
        ctx.font = "11px ui-monospace, monospace";
        ctx.fillText(readable(top.token), LENS.label + p * cell + cell / 2, y + LENS.row / 2, cell - 4);
        ctx.font = "12px system-ui, sans-serif";
      }
    }
  }
  if (hover && hover.kind === "lens") {
    ctx.strokeStyle = cssColour("--accent");
    ctx.lineWidth = 2;
    ctx.strokeRect(LENS.label + hover.p * cell, LENS.top + hover.d * LENS.row, cell - 1, LENS.row - 1);
  }
}

function lensAt(x, y) {
  const p = Math.floor((x - LENS.label) / lensCell());
  const d = Math.floor((y - LENS.top) / LENS.row);
  if (p < 0 || p >= data.n || d < 0 || d >= data.lens.length) return null;
  return { kind: "lens", d, p };
}

function describeLens(c) {
  const top = data.lens[c.d][c.p].map((t) => `${readable(t.token)} ${(t.prob * 100).toFixed(1)}%`).join(", ");
  return `depth ${c.d}, after ${JSON.stringify(data.tokens[c.p])} (#${c.p}): ${top}`;
}

const IMPORTANCE = { label: 70, top: 24, cell: 40 };

function drawImportance() {
  const L = model.n_layer;
  const H = model.n_head;
  const { label, top, cell } = IMPORTANCE;
  resize(label + H * cell + 8, top + L * cell + 8);
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.fillStyle = cssColour("--fg");
  ctx.textAlign = "left";
  if (!data.importance) {
    ctx.fillText(data.tokens.length < 2 ? "head importance needs at least two tokens" : "loading…", 4, 12);
    return;
  }
  ctx.fillText("change in mean log p(next token) with the head off (rows: layers, columns: heads)", 4, 12);
  const worst = Math.max(1e-9, ...data.importance.flat().map(Math.abs));
  for (let l = 0; l < L; l++) {
    ctx.fillStyle = cssColour("--fg");
    ctx.textAlign = "right";
    ctx.fillText(`layer ${l}`, label - 6, top + l * cell + cell / 2);
    for (let h = 0; h < H; h++) {
      const v = data.importance[l][h];
      const t = Math.min(1, Math.abs(v) / worst);
      // Red where the model needs the head (the log-probability falls without it), blue where it gains.
      ctx.fillStyle = v < 0 ? `hsl(0, 80%, ${95 - 45 * t}%)` : `hsl(215, 80%, ${95 - 45 * t}%)`;
      ctx.fillRect(label + h * cell, top + l * cell, cell - 1, cell - 1);
      if (state.ablate.has(`${l}.${h}`)) {
        ctx.strokeStyle = "#1b1f24";
        ctx.lineWidth = 2;
        ctx.strokeRect(label + h * cell + 3, top + l * cell + 3, cell - 7, cell - 7);
      }
    }
  }
  if (hover && hover.kind === "head") {
    ctx.strokeStyle = cssColour("--accent");
    ctx.lineWidth = 2;
    ctx.strokeRect(label + hover.h * cell, top + hover.l * cell, cell - 1, cell - 1);
  }
}

function importanceAt(x, y) {
  const { label, top, cell } = IMPORTANCE;
  const h = Math.floor((x - label) / cell);
  const l = Math.floor((y - top) / cell);
  if (!data.importance || h < 0 || h >= model.n_head || l < 0 || l >= model.n_layer) return null;
  return { kind: "head", l, h };
}

function toggleAblation(key, on) {
  if (on) state.ablate.add(key);
  else state.ablate.delete(key);
  const box = document.querySelector(`#ablate input[data-head="${key}"]`);
  if (box) box.checked = on;
  run();
}

function matrixCell(x, y) {
  const cell = Number(canvas.dataset.cell);
  const k = Math.floor((x - Number(canvas.dataset.left)) / cell);
  const q = Math.floor((y - Number(canvas.dataset.top)) / cell);
  if (q < 0 || k < 0 || q >= data.n || k >= data.n) return null;
  return { kind: "cell", q, k };
}

function describeCell(c) {
  const out = $("cell");
  const tq = JSON.stringify(data.tokens[c.q]);
  const tk = JSON.stringify(data.tokens[c.k]);
  let value = null;
  if (c.k > c.q) {
    out.textContent = `query ${c.q} ${tq}, key ${c.k} ${tk}: masked (a token never attends to later ones)`;
  } else {
    const v = state.view === "rollout" ? rolloutValue(c.q, c.k) : heatValue(c.q, c.k);
    // A single head's weight is the float32 the model computed; means and rollout are float64 here.
    value = state.view === "heatmap" && state.head !== "mean" ? f32(v) : String(v);
    out.textContent = `query ${c.q} ${tq}, key ${c.k} ${tk}: ${value}`;
  }
  out.dataset.q = String(c.q);
  out.dataset.k = String(c.k);
  out.dataset.value = value === null ? "" : value;
  return out.textContent;
}

function drawGeneration() {
  const box = $("gen-tokens");
  box.replaceChildren();
  const width = 720;
  if (!gen || gen.steps.length === 0) {
    resize(width, 40);
    $("step-label").textContent = "";
    return;
  }
  const s = Number($("step").value);
  const step = gen.steps[s];
  const context = [...gen.prompt, ...gen.steps.slice(0, s).map((x) => x.token)];
  const weights = context.map((_, k) => {
    if (state.head !== "mean") return step.attention[state.head][k];
    let sum = 0;
    for (const row of step.attention) sum += row[k];
    return sum / step.attention.length;
  });
  const rgb = ramp();
  context.forEach((tok, k) => {
    const span = document.createElement("span");
    span.textContent = readable(tok);
    const c = rgb(weights[k] * 2);
    span.style.background = `rgb(${c.join(",")})`;
    span.style.color = weights[k] > 0.25 ? cssColour("--bg") : cssColour("--fg");
    span.title = `key ${k}: ${String(weights[k])}`;
    box.append(span);
  });
  const made = document.createElement("span");
  made.textContent = readable(step.token);
  made.className = "new";
  made.style.outline = `2px solid ${cssColour("--accent")}`;
  made.style.color = cssColour("--fg");
  box.append(made);
  $("step-label").textContent = `step ${s + 1} of ${gen.steps.length}: ${JSON.stringify(step.token)}, layer ${gen.layer}`;
  // Bars: the new token's weight on each context token.
  const bar = Math.max(2, Math.min(24, Math.floor(width / context.length)));
  resize(Math.max(width, context.length * bar), 140);
  ctx.fillStyle = cssColour("--accent");
  weights.forEach((w, k) => ctx.fillRect(k * bar, 130 - w * 120, Math.max(1, bar - 1), w * 120));
  ctx.fillStyle = cssColour("--muted");
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText("weight of the new token on each context token", 4, 12);
}

// -- export --------------------------------------------------------------------------------------

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function viewData() {
  const n = data.n;
  const matrix = (f) => Array.from({ length: n }, (_, q) => Array.from({ length: n }, (_, k) => (k > q ? 0 : f(q, k))));
  const base = { model: model.id, text: data.text, tokens: data.tokens, token_ids: data.ids, view: state.view };
  if (state.view === "head") {
    const heads = [...Array(model.n_head).keys()].filter((h) => !state.hidden.has(h));
    return { ...base, layer: state.layer, heads, attention: heads.map((h) => matrix((q, k) => weight(state.layer, h, q, k))) };
  }
  if (state.view === "model") {
    return { ...base, attention: [...Array(model.n_layer).keys()].map((l) => [...Array(model.n_head).keys()].map((h) => matrix((q, k) => weight(l, h, q, k)))) };
  }
  if (state.view === "heatmap") return { ...base, layer: state.layer, head: state.head, attention: matrix(heatValue) };
  if (state.view === "rollout") return { ...base, rollout: matrix(rolloutValue) };
  if (state.view === "lens") return { ...base, ablate: ablatePairs(), lens: data.lens };
  if (state.view === "importance") return { ...base, importance: data.importance };
  return { ...base, layer: gen ? gen.layer : state.layer, generated: gen ? gen.steps : [] };
}

// -- wiring --------------------------------------------------------------------------------------

function setView(view) {
  state.view = view;
  hover = null;
  saveUrl();
  draw();
  if (view === "importance" && data && !data.importance) {
    setStatus("busy");
    fetchImportance().then(() => { draw(); setStatus("ready"); }).catch(showError);
  }
}

function pointer(e) {
  const r = canvas.getBoundingClientRect();
  return [e.clientX - r.left, e.clientY - r.top];
}

function onMove(e) {
  if (!data) return;
  const [x, y] = pointer(e);
  const tip = $("tooltip");
  let found = null;
  let text = "";
  if (state.view === "head") found = headViewRow(x, y);
  if (state.view === "model") found = modelViewMap(x, y);
  if (state.view === "heatmap" || state.view === "rollout") found = matrixCell(x, y);
  if (state.view === "lens") found = lensAt(x, y);
  if (state.view === "importance") found = importanceAt(x, y);
  if (found && found.kind === "cell") text = describeCell(found);
  if (found && found.kind === "lens") text = describeLens(found);
  if (found && found.kind === "head") text = `layer ${found.l}, head ${found.h}: ${data.importance[found.l][found.h]} (click to ablate)`;
  if (found && found.kind === "map") text = `layer ${found.layer}, head ${found.head}: click to open`;
  if (found && found.kind === "row") text = `${found.side} ${found.index}: ${JSON.stringify(data.tokens[found.index])}`;
  if (JSON.stringify(found) !== JSON.stringify(hover)) {
    hover = found;
    draw();
  }
  tip.hidden = !found;
  tip.textContent = text;
  tip.style.left = `${e.clientX + 12}px`;
  tip.style.top = `${e.clientY + 12}px`;
}

function onKey(e) {
  if (!data) return;
  const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
  const d = moves[e.key];
  if (state.view === "model") {
    const at = hover || { kind: "map", layer: state.layer, head: typeof state.head === "number" ? state.head : 0 };
    if (e.key === "Enter") {
      openMap(at.layer, at.head);
    } else if (d) {
      hover = { kind: "map", layer: clampInt(String(at.layer + d[0]), 0, model.n_layer - 1), head: clampInt(String(at.head + d[1]), 0, model.n_head - 1) };
      draw();
    } else return;
  } else if ((state.view === "heatmap" || state.view === "rollout") && d) {
    const at = hover || { kind: "cell", q: 0, k: 0 };
    hover = { kind: "cell", q: clampInt(String(at.q + d[0]), 0, data.n - 1), k: clampInt(String(at.k + d[1]), 0, data.n - 1) };
    describeCell(hover);
    draw();
  } else if (state.view === "head" && d && d[0]) {
    const at = hover || { kind: "row", side: "query", index: -1 };
    hover = { kind: "row", side: "query", index: clampInt(String(at.index + d[0]), 0, data.n - 1) };
    draw();
  } else return;
  e.preventDefault();
}

function openMap(layer, head) {
  state.layer = layer;
  state.head = head;
  setView("heatmap");
}

// The model's own controls: its layers and heads (built again when another model is picked).
function buildModelControls() {
  const layer = $("layer");
  layer.replaceChildren();
  for (let l = 0; l < model.n_layer; l++) layer.append(new Option(String(l), String(l)));
  layer.value = String(state.layer);
  const head = $("head");
  head.replaceChildren();
  for (let h = 0; h < model.n_head; h++) head.append(new Option(String(h), String(h)));
  head.append(new Option("mean over heads", "mean"));
  head.value = String(state.head);
  const toggles = $("head-toggles");
  toggles.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "Heads shown" }));
  state.hidden = new Set([...state.hidden].filter((h) => h < model.n_head));
  for (let h = 0; h < model.n_head; h++) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = !state.hidden.has(h);
    box.dataset.head = String(h);
    box.addEventListener("change", () => {
      if (box.checked) state.hidden.delete(h);
      else state.hidden.add(h);
      draw();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = headColour(h);
    label.append(box, swatch, ` head ${h}`);
    toggles.append(label);
  }
  const ablate = $("ablate");
  ablate.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "Switch a head's output off" }));
  $("ablate-box").open = state.ablate.size > 0;
  for (let l = 0; l < model.n_layer; l++) {
    for (let h = 0; h < model.n_head; h++) {
      const key = `${l}.${h}`;
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = state.ablate.has(key);
      box.dataset.head = key;
      box.addEventListener("change", () => toggleAblation(key, box.checked));
      label.append(box, ` ${key}`);
      ablate.append(label);
    }
  }
}

function buildControls() {
  const picker = $("model");
  for (const card of cards) picker.append(new Option(`${card.id} (version ${card.version})`, card.id));
  picker.value = model.id;
  buildModelControls();
  const samples = $("samples");
  samples.append(new Option("choose a sample…", ""));
  for (const s of SAMPLES) samples.append(new Option(s.replace(/\n/g, " ↵ "), s));
}

function wire() {
  $("run").addEventListener("click", run);
  $("model").addEventListener("change", (e) => pickModel(e.target.value));
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      run();
    }
  });
  $("samples").addEventListener("change", (e) => {
    if (!e.target.value) return;
    $("text").value = e.target.value;
    run();
  });
  for (const b of document.querySelectorAll("#views [role=tab]")) b.addEventListener("click", () => setView(b.dataset.view));
  $("layer").addEventListener("change", (e) => {
    state.layer = Number(e.target.value);
    saveUrl();
    draw();
  });
  $("head").addEventListener("change", (e) => {
    state.head = e.target.value === "mean" ? "mean" : Number(e.target.value);
    saveUrl();
    draw();
  });
  $("generate").addEventListener("click", generate);
  $("step").addEventListener("input", draw);
  $("export-png").addEventListener("click", () => canvas.toBlob((b) => download(b, `attention-${state.view}.png`)));
  $("export-json").addEventListener("click", () => {
    if (data) download(new Blob([JSON.stringify(viewData())], { type: "application/json" }), `attention-${state.view}.json`);
  });
  canvas.addEventListener("mousemove", onMove);
  canvas.addEventListener("mouseleave", () => {
    $("tooltip").hidden = true;
    if (hover && state.view !== "heatmap" && state.view !== "rollout") {
      hover = null;
      draw();
    }
  });
  canvas.addEventListener("click", (e) => {
    if (state.view === "importance" && data) {
      const at = importanceAt(...pointer(e));
      if (at) toggleAblation(`${at.l}.${at.h}`, !state.ablate.has(`${at.l}.${at.h}`));
      return;
    }
    if (state.view !== "model" || !data) return;
    const m = modelViewMap(...pointer(e));
    if (m) openMap(m.layer, m.head);
  });
  canvas.addEventListener("keydown", onKey);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (data) renderTokens();
    draw();
  });
}

// Every loaded model (GET /v1/models), and the one the page asks.
let cards = [];

function useModel(card) {
  model = { id: card.id, n_layer: card.n_layer, n_head: card.n_head, context_length: card.context_length };
  $("model-info").textContent = `${card.id} (version ${card.version}): ${card.n_layer} layers × ${card.n_head} heads, context ${card.context_length} tokens, on ${card.provider}`;
}

async function pickModel(id) {
  useModel(cards.find((c) => c.id === id));
  state.ablate = new Set(); // another model's heads
  state.layer = Math.min(state.layer, model.n_layer - 1);
  state.head = state.head === "mean" ? "mean" : Math.min(state.head, model.n_head - 1);
  buildModelControls();
  data = null;
  await run();
}

async function start() {
  setStatus("busy");
  $("key-save").addEventListener("click", () => {
    sessionStorage.setItem("attnserve-key", $("api-key").value.trim());
    location.reload();
  });
  try {
    cards = (await (await api("/v1/models")).json()).data;
    const asked = new URLSearchParams(location.search).get("model");
    useModel(cards.find((c) => c.id === asked) || cards[0]);
    loadUrl();
    buildControls();
    wire();
    $("text").value = state.text;
    draw();
    await run();
  } catch (e) {
    showError(e);
  }
}

start();
