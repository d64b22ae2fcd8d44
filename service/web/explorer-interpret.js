// The attention explorer: the logit-lens and head-importance views, and switching heads off. One of four plain scripts that share the page's globals
// (index.html loads them in order: explorer-core, explorer-draw, explorer-interpret, explorer).
"use strict";

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
