// The attention explorer: the logit-lens view, and switching heads off. One of five plain scripts that share the page's globals
// (index.html loads them in order: explorer-core, explorer-draw, explorer-interpret, explorer-intervene, explorer).
"use strict";

// -- the logit lens ------------------------------------------------------------

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

function toggleAblation(key, on) {
  if (on) state.ablate.add(key);
  else state.ablate.delete(key);
  const box = document.querySelector(`#ablate input[data-head="${key}"]`);
  if (box) box.checked = on;
  run();
}
