"use strict";
window.onerror = function (message, source, line) {
  document.getElementById("errors").textContent += "error: " + message + " (line " + line + ")\n";
  document.body.setAttribute("data-status", "error");
};
const VIEWS = JSON.parse(document.getElementById("data").textContent);
const ROW = 18, WIRES = 220;
const $ = (id) => document.getElementById(id);
const state = { view: 0, layer: 0, head: 0, mode: "lines", hover: null };

function show(token) {  // spaces and control characters made visible; text only, never markup
  return token.replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/\r/g, "\\r")
    .replace(/ /g, "\u2423") || "\u2205";
}
function decode(b64) {
  const bin = atob(b64), out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
for (const view of VIEWS) for (const layer of view.layers) layer.bytes = decode(layer.weights);

function current() {  // the selected map as a function w(query, key) in [0, 1]
  const view = VIEWS[state.view], layer = view.layers[state.layer];
  const T = view.queries.length, S = view.keys.length, bytes = layer.bytes;
  const heads = state.head < 0 ? [...Array(layer.n_head).keys()] : [state.head];
  return { view, T, S, w: (q, k) => {
    let sum = 0;
    for (const h of heads) sum += bytes[(h * T + q) * S + k];
    return sum / (255 * heads.length);
  } };
}
function fillSelect(select, labels, value) {
  select.replaceChildren(...labels.map((label, i) => { const o = document.createElement("option");
    o.value = String(i - (select.id === "head" ? 1 : 0)); o.textContent = label; return o; }));
  select.value = String(value);
}
function setup() {
  const view = VIEWS[state.view];
  fillSelect($("view"), VIEWS.map((v) => v.title), state.view);
  state.layer = Math.min(state.layer, view.layers.length - 1);
  fillSelect($("layer"), view.layers.map((l) => l.name), state.layer);
  const n_head = view.layers[state.layer].n_head;
  state.head = Math.min(state.head, n_head - 1);
  fillSelect($("head"), ["mean of heads", ...[...Array(n_head).keys()].map(String)], state.head);
  for (const [id, tokens, side] of [["queries", view.queries, "q"], ["keys", view.keys, "k"]]) {
    $(id).replaceChildren(...tokens.map((t, i) => { const span = document.createElement("span");
      span.className = "tok"; span.textContent = show(t); span.dataset.side = side; span.dataset.index = i;
      return span; }));
  }
  draw();
}
function draw() {
  $("lines").style.display = state.mode === "lines" ? "flex" : "none";
  $("matrix").style.display = state.mode === "matrix" ? "block" : "none";
  if (state.mode === "lines") drawLines(); else drawMatrix();
}
function drawLines() {
  const { T, S, w } = current(), canvas = $("wires"), ctx = canvas.getContext("2d");
  canvas.width = WIRES; canvas.height = ROW * Math.max(T, S);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const hover = state.hover, qSpans = $("queries").children, kSpans = $("keys").children;
  for (let q = 0; q < T; q++) qSpans[q].style.background = "";
  for (let k = 0; k < S; k++) kSpans[k].style.background = "";
  let scale = 1;  // a hovered token's links are drawn relative to its strongest one
  if (hover) {
    let strongest = 0;
    for (let j = 0; j < (hover.side === "q" ? S : T); j++)
      strongest = Math.max(strongest, hover.side === "q" ? w(hover.index, j) : w(j, hover.index));
    scale = strongest > 0 ? 1 / strongest : 1;
  }
  for (let q = 0; q < T; q++) {
    if (hover && hover.side === "q" && hover.index !== q) continue;
    for (let k = 0; k < S; k++) {
      if (hover && hover.side === "k" && hover.index !== k) continue;
      const a = w(q, k) * scale;
      if (a < 0.004) continue;
      ctx.strokeStyle = "rgba(31, 119, 180, " + a + ")"; ctx.lineWidth = hover ? 2 : 1;
      ctx.beginPath(); ctx.moveTo(0, q * ROW + ROW / 2); ctx.lineTo(WIRES, k * ROW + ROW / 2); ctx.stroke();
      if (hover && hover.side === "q") kSpans[k].style.background = "rgba(255, 127, 14, " + a + ")";
      if (hover && hover.side === "k") qSpans[q].style.background = "rgba(255, 127, 14, " + a + ")";
    }
  }
  if (hover) (hover.side === "q" ? qSpans : kSpans)[hover.index].style.background = "#ddd";
}
function drawMatrix() {
  const { T, S, w } = current(), canvas = $("matrix"), ctx = canvas.getContext("2d");
  const cell = Math.max(2, Math.min(16, Math.floor(800 / Math.max(T, S))));
  canvas.width = S * cell; canvas.height = T * cell;
  for (let q = 0; q < T; q++) for (let k = 0; k < S; k++) {
    const shade = Math.round(255 * (1 - w(q, k)));
    ctx.fillStyle = "rgb(" + shade + "," + shade + ",255)"; ctx.fillRect(k * cell, q * cell, cell, cell);
  }
  canvas.dataset.cell = cell;
}
function describe(q, k) {
  const { view, w } = current();
  return "query " + q + " " + JSON.stringify(view.queries[q]) + " -> key " + k + " " +
    JSON.stringify(view.keys[k]) + ": " + w(q, k).toFixed(3);
}
function hoverToken(event) {
  const span = event.target.closest(".tok");
  state.hover = span ? { side: span.dataset.side, index: Number(span.dataset.index) } : null;
  if (span) {
    const { view, S, T, w } = current(), i = state.hover.index;
    let best = 0, bestWeight = -1;
    const n = state.hover.side === "q" ? S : T;
    for (let j = 0; j < n; j++) { const a = state.hover.side === "q" ? w(i, j) : w(j, i);
      if (a > bestWeight) { best = j; bestWeight = a; } }
    $("info").textContent = state.hover.side === "q" ? describe(i, best) + "  (strongest)"
      : "key " + i + " " + JSON.stringify(view.keys[i]) + " is attended most by query " + best;
  }
  drawLines();
}
$("lines").addEventListener("mouseover", hoverToken);
$("lines").addEventListener("mouseleave", () => { state.hover = null; drawLines(); });
$("matrix").addEventListener("mousemove", (event) => {
  const cell = Number($("matrix").dataset.cell), { T, S } = current();
  const q = Math.floor(event.offsetY / cell), k = Math.floor(event.offsetX / cell);
  if (q >= 0 && q < T && k >= 0 && k < S) $("info").textContent = describe(q, k);
});
$("view").addEventListener("change", (e) => { state.view = Number(e.target.value); state.layer = 0; setup(); });
$("layer").addEventListener("change", (e) => { state.layer = Number(e.target.value); setup(); });
$("head").addEventListener("change", (e) => { state.head = Number(e.target.value); draw(); });
for (const radio of document.querySelectorAll("input[name=mode]"))
  radio.addEventListener("change", (e) => { state.mode = e.target.value; draw(); });
setup();
document.body.setAttribute("data-status", "ready");
