// The attention explorer: the labelled heatmap the grid views draw with, the patching and logit
// attribution views, and steering in the generate view. One of five plain scripts that share the
// page's globals (index.html loads them in order: explorer-core, explorer-draw, explorer-interpret,
// explorer-intervene, explorer).
"use strict";

// -- a labelled heatmap ----------------------------------------------------------------------------

// Every grid has its whole title, a label for each row and column, and a colour scale with its units;
// the canvas is made wide enough for the longest of them. grids: the last drawing's, for hit tests.
const GRIDMAP = { left: 110, titleHeight: 22, columnLabels: 64, legendHeight: 46, gap: 18 };
let grids = [];

// Red below zero, blue above, white (or the dark background) at zero: t in [-1, 1].
function diverging(t) {
  const lightness = 100 - 50 * Math.min(1, Math.abs(t));
  const base = cssColour("--heat-low") === "#ffffff" ? lightness : 100 - lightness + 10;
  return t < 0 ? `hsl(0, 75%, ${base}%)` : `hsl(215, 75%, ${base}%)`;
}

function gridCell(cols) {
  return Math.max(14, Math.min(40, Math.floor(760 / Math.max(1, cols))));
}

// The space one grid takes: {width, height} for these options.
function gridSize(g) {
  const cell = gridCell(g.cols.length);
  ctx.font = "13px system-ui, sans-serif";
  const width = Math.max(ctx.measureText(g.title).width + 16, GRIDMAP.left + g.cols.length * cell + 8, 420);
  return { width, height: GRIDMAP.titleHeight + GRIDMAP.columnLabels + g.rows.length * cell + GRIDMAP.legendHeight };
}

// Draw g = {kind, title, rows, cols, values[r][c], span: [lo, hi], units, mark(r, c)} at y; returns its layout.
function drawGrid(g, y) {
  const cell = gridCell(g.cols.length);
  const x0 = GRIDMAP.left;
  const y0 = y + GRIDMAP.titleHeight + GRIDMAP.columnLabels;
  const [lo, hi] = g.span;
  const scale = (v) => Math.max(-1, Math.min(1, v / hi));
  ctx.textBaseline = "middle";
  ctx.fillStyle = cssColour("--fg");
  ctx.textAlign = "left";
  ctx.font = "13px system-ui, sans-serif";
  ctx.fillText(g.title, 4, y + 10);
  ctx.font = "11px ui-monospace, monospace";
  for (let c = 0; c < g.cols.length; c++) {
    ctx.save();
    ctx.translate(x0 + c * cell + cell / 2, y0 - 4);
    ctx.rotate(-Math.PI / 3);
    ctx.textAlign = "left";
    ctx.fillText(g.cols[c], 0, 0, GRIDMAP.columnLabels + 8);
    ctx.restore();
  }
  for (let r = 0; r < g.rows.length; r++) {
    ctx.fillStyle = cssColour("--fg");
    ctx.textAlign = "right";
    ctx.fillText(g.rows[r], x0 - 6, y0 + r * cell + cell / 2, x0 - 8);
    for (let c = 0; c < g.cols.length; c++) {
      ctx.fillStyle = diverging(scale(g.values[r][c]));
      ctx.fillRect(x0 + c * cell, y0 + r * cell, cell - 1, cell - 1);
      if (g.mark && g.mark(r, c)) {
        ctx.strokeStyle = cssColour("--fg");
        ctx.lineWidth = 2;
        ctx.strokeRect(x0 + c * cell + 3, y0 + r * cell + 3, cell - 7, cell - 7);
      }
    }
  }
  if (hover && hover.kind === g.kind) {
    ctx.strokeStyle = cssColour("--accent");
    ctx.lineWidth = 2;
    ctx.strokeRect(x0 + hover.c * cell, y0 + hover.r * cell, cell - 1, cell - 1);
  }
  // The colour scale: the grid's span, its ends and zero labelled, with the units under it.
  const ly = y0 + g.rows.length * cell + 8;
  const width = 240;
  for (let i = 0; i < width; i++) {
    const v = lo + ((hi - lo) * i) / (width - 1);
    ctx.fillStyle = diverging(scale(v));
    ctx.fillRect(x0 + i, ly, 1, 10);
  }
  ctx.fillStyle = cssColour("--fg");
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "center";
  const at = (v) => x0 + ((v - lo) / (hi - lo || 1)) * (width - 1);
  // The ends, and zero where it is not crowded by one of them.
  const ticks = [lo, hi, ...(at(0) - at(lo) > 40 && at(hi) - at(0) > 40 ? [0] : [])];
  for (const v of ticks) ctx.fillText(String(Number(v.toPrecision(3))), at(v), ly + 18);
  ctx.textAlign = "left";
  ctx.fillText(g.units, x0, ly + 32);
  return { kind: g.kind, x0, y0, cell, rows: g.rows.length, cols: g.cols.length, title: g.title, units: g.units };
}

// Draw grids one under the other, on a canvas as wide as the widest needs.
function drawGrids(list, note) {
  const sizes = list.map(gridSize);
  const width = Math.max(...sizes.map((s) => s.width));
  resize(width, sizes.reduce((sum, s) => sum + s.height + GRIDMAP.gap, 0) + (note ? 24 : 0));
  let y = 4;
  grids = [];
  if (note) {
    ctx.fillStyle = cssColour("--fg");
    ctx.font = "13px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(note, 4, y + 8);
    y += 24;
  }
  list.forEach((g, i) => {
    grids.push(drawGrid(g, y));
    y += sizes[i].height + GRIDMAP.gap;
  });
  canvas.dataset.grids = JSON.stringify(grids); // the layout, for the page's tests
  canvas.dataset.titles = JSON.stringify(grids.map((g) => g.title));
}

function gridAt(x, y) {
  for (const g of grids) {
    const c = Math.floor((x - g.x0) / g.cell);
    const r = Math.floor((y - g.y0) / g.cell);
    if (c >= 0 && c < g.cols && r >= 0 && r < g.rows) return { kind: g.kind, r, c };
  }
  return null;
}

function headLabels() {
  return { rows: [...Array(model.n_layer).keys()].map((l) => `layer ${l}`), cols: [...Array(model.n_head).keys()].map((h) => `head ${h}`) };
}

// A colour scale symmetric about zero, so that a colour's depth means the same on either side.
function span(values) {
  const largest = Math.max(1e-9, ...values.flat(Infinity).map(Math.abs));
  return [-largest, largest];
}

// -- head importance, on the labelled heatmap --------------------------------------------------------

function drawImportance() {
  if (!data.importance) {
    resize(480, 40);
    ctx.fillStyle = cssColour("--fg");
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(data.tokens.length < 2 ? "head importance needs at least two tokens" : "loading…", 4, 20);
    grids = [];
    return;
  }
  drawGrids([{
    kind: "importance",
    title: "Head importance: the change in mean log p(next token) with each head switched off (click a head to ablate it)",
    ...headLabels(),
    values: data.importance,
    span: span(data.importance),
    units: "change in mean log-probability, in nats (red: the model needs the head)",
    mark: (l, h) => state.ablate.has(`${l}.${h}`),
  }]);
}

function describeImportance(c) {
  return `layer ${c.r}, head ${c.c}: ${data.importance[c.r][c.c]} nats (click to ablate)`;
}

// -- activation patching ---------------------------------------------------------------------------

const PATCH_SITES = ["resid_pre", "attn_out", "mlp_out"];

async function fetchPatch() {
  const corrupted = $("patch-corrupted").value;
  const body = { model: model.id, clean: data.text, corrupted, direction: $("patch-direction").value };
  data.patch = null;
  if (!corrupted) return;
  data.patch = await (await api("/v1/patch", body)).json();
}

function drawPatch() {
  const p = data.patch;
  if (!p) {
    resize(640, 40);
    grids = [];
    ctx.fillStyle = cssColour("--fg");
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText("type a corrupted text with as many tokens as the clean one, then press Patch", 4, 20);
    return;
  }
  const site = $("patch-site").value;
  const positions = p.corrupted.tokens.map((t, i) => `${i} ${readable(t)}`);
  const units = "normalised score: 0 is the corrupted run's answer, 1 the clean run's";
  const answer = `${readable(p.answer.correct.token)} vs ${readable(p.answer.incorrect.token)}`;
  drawGrids(
    [
      { kind: "patch-heads", title: `Each head's output patched (${p.direction}): logit difference ${answer}`, ...headLabels(), values: p.sites.heads.score, span: span([p.sites.heads.score, [1]]), units },
      {
        kind: "patch-positions",
        title: `${site} patched at each layer (rows) and position (columns): logit difference ${answer}`,
        rows: [...Array(model.n_layer).keys()].map((l) => `layer ${l}`),
        cols: positions,
        values: p.sites[site].score,
        span: span([p.sites[site].score, [1]]),
        units,
      },
    ],
    `clean logit difference ${p.clean.logit_diff.toFixed(3)}, corrupted ${p.corrupted.logit_diff.toFixed(3)}`,
  );
}

function describePatch(c) {
  const p = data.patch;
  const site = c.kind === "patch-heads" ? "heads" : $("patch-site").value;
  const cells = p.sites[site];
  const where = site === "heads" ? `layer ${c.r}, head ${c.c}` : `${site}, layer ${c.r}, position ${c.c} (${JSON.stringify(p.corrupted.tokens[c.c])})`;
  return `${where}: logit difference ${cells.logit_diff[c.r][c.c]}, score ${cells.score[c.r][c.c]}`;
}

// -- direct logit attribution -------------------------------------------------------------------------

const BARS = { label: 150, row: 16, top: 30, width: 420 };

async function fetchAttribution() {
  if (data.attribution) return;
  const r = await api("/v1/logit-attribution", { model: model.id, texts: [data.text], ablate: ablatePairs() });
  data.attribution = (await r.json()).results[0];
}

function attributionParts(a) {
  const parts = [["embeddings", a.embeddings]];
  a.heads.forEach((row, l) => row.forEach((v, h) => parts.push([`head ${l}.${h}`, v])));
  a.mlps.forEach((v, l) => parts.push([`MLP ${l}`, v]));
  a.attention_biases.forEach((v, l) => parts.push([`attention bias ${l}`, v]));
  parts.push(["final LayerNorm bias", a.final_bias]);
  return parts;
}

function drawAttribution() {
  const a = data.attribution;
  grids = [];
  if (!a) {
    resize(480, 40);
    return;
  }
  const parts = attributionParts(a);
  const title = `Direct logit attribution of ${readable(a.target.token)} after position ${a.position}: logit ${a.logit.toFixed(3)}, in logits`;
  ctx.font = "13px system-ui, sans-serif";
  const width = Math.max(ctx.measureText(title).width + 16, BARS.label + BARS.width + 80);
  resize(width, BARS.top + parts.length * BARS.row + 8);
  ctx.font = "13px system-ui, sans-serif"; // resizing the canvas reset it
  ctx.textBaseline = "middle";
  ctx.fillStyle = cssColour("--fg");
  ctx.textAlign = "left";
  ctx.fillText(title, 4, 12);
  const biggest = Math.max(1e-9, ...parts.map(([, v]) => Math.abs(v)));
  const zero = BARS.label + BARS.width / 2;
  ctx.font = "11px ui-monospace, monospace";
  parts.forEach(([name, v], i) => {
    const y = BARS.top + i * BARS.row;
    ctx.fillStyle = hover && hover.kind === "bar" && hover.i === i ? cssColour("--accent") : diverging(v / biggest);
    const w = (v / biggest) * (BARS.width / 2);
    ctx.fillRect(Math.min(zero, zero + w), y + 2, Math.abs(w), BARS.row - 4);
    ctx.fillStyle = cssColour("--fg");
    ctx.textAlign = "right";
    ctx.fillText(name, BARS.label - 6, y + BARS.row / 2);
    ctx.textAlign = "left";
    ctx.fillText(v.toFixed(3), BARS.label + BARS.width + 6, y + BARS.row / 2);
  });
  ctx.fillStyle = cssColour("--muted");
  ctx.fillRect(zero, BARS.top, 1, parts.length * BARS.row);
  canvas.dataset.titles = JSON.stringify([title]);
}

function attributionAt(x, y) {
  if (!data.attribution) return null;
  const i = Math.floor((y - BARS.top) / BARS.row);
  return i >= 0 && i < attributionParts(data.attribution).length ? { kind: "bar", i } : null;
}

function describeBar(c) {
  const [name, v] = attributionParts(data.attribution)[c.i];
  return `${name}: ${v} of the logit ${data.attribution.logit}`;
}

// -- steering in the generate view -----------------------------------------------------------------

// The steer entry the generate view's controls describe, or null when no text to add is given.
function steerEntry() {
  const add = $("steer-add").value;
  if (!add) return null;
  const vector = { add, ...($("steer-subtract").value ? { subtract: $("steer-subtract").value } : {}) };
  return { layer: Number($("steer-layer").value), vector, scale: Number($("steer-scale").value) };
}

// The plain and the steered greedy continuations, side by side.
async function steeredContinuations(n) {
  const entry = steerEntry();
  const box = $("steer-compare");
  box.hidden = !entry;
  if (!entry) return;
  const body = { model: model.id, prompt: data.text, max_tokens: n, temperature: 0, ablate: ablatePairs() };
  const [plain, steered] = await Promise.all([
    api("/v1/completions", body).then((r) => r.json()),
    api("/v1/completions", { ...body, steer: [entry] }).then((r) => r.json()),
  ]);
  $("plain-text").textContent = plain.choices[0].text;
  $("steered-text").textContent = steered.choices[0].text;
}

function buildSteerControls() {
  const layer = $("steer-layer");
  layer.replaceChildren();
  for (let l = 0; l < model.n_layer; l++) layer.append(new Option(String(l), String(l)));
}
