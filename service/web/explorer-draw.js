// The attention explorer: the canvas views of attention (head, model, heatmap, rollout, generation). One of five plain scripts that share the page's globals
// (index.html loads them in order: explorer-core, explorer-draw, explorer-interpret, explorer-intervene, explorer).
"use strict";

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
  $("steer-controls").hidden = state.view !== "generate";
  $("steer-compare").hidden = state.view !== "generate" || !steerEntry();
  $("patch-controls").hidden = state.view !== "patch";
  $("gen-tokens").hidden = state.view !== "generate";
  $("layer").value = String(state.layer);
  $("head").value = String(state.head);
  if (!data) return;
  if (!mapsReady()) { // the maps this view shows are on their way; draw() runs again when they come
    resize(720, 40);
    ctx.fillStyle = cssColour("--muted");
    ctx.font = "13px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.fillText("fetching this view's attention maps…", 8, 20);
    canvas.dataset.view = "loading";
    return;
  }
  const started = performance.now();
  ({
    head: drawHeadView, model: drawModelView, heatmap: drawHeatmap, rollout: drawRollout, generate: drawGeneration,
    lens: drawLens, importance: drawImportance, patch: drawPatch, attribution: drawAttribution,
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
      if (hasMap(l, h)) {
        const m = data.maps.get(l * model.n_head + h);
        ctx.drawImage(mapImage((q, k) => m[q * n + k], n, table), x, y, cell, cell);
      } else { // a long text: only the maps a view has fetched are drawn; the others are picked
        ctx.fillStyle = cssColour("--muted");
        ctx.fillText(`${l}.${h}`, x + cell / 2, y + cell / 2);
      }
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
  if (!eager(data.n)) { // rollout multiplies every map of every layer: too many to fetch and hold here
    resize(720, 40);
    ctx.fillStyle = cssColour("--muted");
    ctx.font = "13px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    const most = Math.floor(Math.sqrt(EAGER_WEIGHTS / (model.n_layer * model.n_head)));
    ctx.fillText(`Rollout needs all ${model.n_layer * model.n_head} maps at once: up to ${most} tokens; this text has ${data.n}.`, 8, 20);
    return;
  }
  if (!rollout) rollout = computeRollout();
  drawMatrix(rolloutValue, `attention rollout over ${model.n_layer} layers (mean over heads, plus the residual)`);
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
