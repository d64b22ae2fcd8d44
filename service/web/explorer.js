// The attention explorer: export, the controls' wiring and the start. One of five plain scripts that share the page's globals
// (index.html loads them in order: explorer-core, explorer-draw, explorer-interpret, explorer-intervene, explorer).
"use strict";

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
    // A long text's model view holds only the maps fetched so far: the others are null.
    return { ...base, attention: [...Array(model.n_layer).keys()].map((l) => [...Array(model.n_head).keys()].map((h) => (hasMap(l, h) ? matrix((q, k) => weight(l, h, q, k)) : null))) };
  }
  if (state.view === "heatmap") return { ...base, layer: state.layer, head: state.head, attention: matrix(heatValue) };
  if (state.view === "rollout") return { ...base, rollout: rollout ? matrix(rolloutValue) : null };
  if (state.view === "lens") return { ...base, ablate: ablatePairs(), lens: data.lens };
  if (state.view === "importance") return { ...base, importance: data.importance };
  if (state.view === "patch") return { ...base, patch: data.patch };
  if (state.view === "attribution") return { ...base, attribution: data.attribution };
  return { ...base, layer: gen ? gen.layer : state.layer, generated: gen ? gen.steps : [] };
}

// -- wiring --------------------------------------------------------------------------------------

function setView(view) {
  state.view = view;
  hover = null;
  saveUrl();
  draw();
  const fetches = { importance: fetchImportance, attribution: fetchAttribution };
  if (fetches[view] && data && !data[view]) {
    setStatus("busy");
    fetches[view]().then(() => { draw(); setStatus("ready"); }).catch(showError);
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
  if (["importance", "patch"].includes(state.view)) found = gridAt(x, y);
  if (state.view === "attribution") found = attributionAt(x, y);
  if (found && found.kind === "cell") text = describeCell(found);
  if (found && found.kind === "lens") text = describeLens(found);
  if (found && found.kind === "importance") text = describeImportance(found);
  if (found && found.kind.startsWith("patch-")) text = describePatch(found);
  if (found && found.kind === "bar") text = describeBar(found);
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
  buildSteerControls();
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
  $("patch").addEventListener("click", () => {
    setStatus("busy");
    hideError();
    fetchPatch().then(() => { draw(); setStatus("ready"); }).catch(showError);
  });
  $("patch-site").addEventListener("change", draw);
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
      const at = gridAt(...pointer(e));
      if (at) toggleAblation(`${at.r}.${at.c}`, !state.ablate.has(`${at.r}.${at.c}`));
      return;
    }
    if (state.view === "patch" && data && data.patch) {
      const at = gridAt(...pointer(e));
      if (at) $("cell").textContent = describePatch(at);
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
