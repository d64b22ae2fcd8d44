// Two explorers side by side: each frame is the explorer page itself, on its own model, with the
// same text and view. The state lives in the URL (?left=&right=&text=&view=), so a comparison can
// be shared as a link.
"use strict";

const $ = (id) => document.getElementById(id);

function frameUrl(model, text, view) {
  return `./?${new URLSearchParams({ model, text, view })}`;
}

function show() {
  const text = $("text").value;
  const left = $("left").value;
  const right = $("right").value;
  const view = new URLSearchParams(location.search).get("view") || "model";
  history.replaceState(null, "", `${location.pathname}?${new URLSearchParams({ left, right, text, view })}`);
  $("frame-left").src = frameUrl(left, text, view);
  $("frame-right").src = frameUrl(right, text, view);
}

async function start() {
  const headers = {};
  const key = sessionStorage.getItem("attnserve-key");
  if (key) headers.Authorization = `Bearer ${key}`;
  try {
    const r = await fetch("/v1/models", { headers });
    if (!r.ok) throw new Error(`GET /v1/models: ${r.status} ${r.statusText}`);
    const cards = (await r.json()).data;
    const p = new URLSearchParams(location.search);
    for (const id of ["left", "right"]) {
      for (const card of cards) $(id).append(new Option(`${card.id} (version ${card.version})`, card.id));
    }
    const ids = cards.map((c) => c.id);
    $("left").value = ids.includes(p.get("left")) ? p.get("left") : ids[0];
    $("right").value = ids.includes(p.get("right")) ? p.get("right") : ids[Math.min(1, ids.length - 1)];
    $("text").value = p.get("text") || "we do like";
    for (const id of ["left", "right"]) $(id).addEventListener("change", show);
    $("run").addEventListener("click", show);
    $("text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        show();
      }
    });
    show();
  } catch (e) {
    $("error").textContent = e.message;
    $("error").hidden = false;
  }
}

start();
