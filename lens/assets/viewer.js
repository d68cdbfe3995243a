"use strict";
window.onerror = function (message, source, line) {
  document.getElementById("errors").textContent += "error: " + message + " (line " + line + ")\n";
  document.body.setAttribute("data-status", "error");
};
const VIEWS = JSON.parse(document.getElementById("data").textContent);
const ROW = 18, WIRES = 220, LEVELS = 65535;
const STAT_LABELS = { entropy: "entropy", max: "max weight", distance: "mean distance" };
const $ = (id) => document.getElementById(id);
const statLabel = (stat) => STAT_LABELS[stat] || stat;  // a caller's own scores= go by their own name
const HINTS = { lines: "hover a token to see where it attends", matrix: "hover a cell to see its query, key and weight" };
const state = { view: 0, layer: 0, heads: [], mode: "model", detail: "lines", hover: null, stat: "", sort: false,
  tokensOf: -1 };

function show(token) {  // spaces and control characters made visible; text only, never markup
  return token.replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/\r/g, "\\r")
    .replace(/ /g, "\u2423") || "\u2205";
}
function decode(b64) {
  const bin = atob(b64), out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
function element(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}
function paint(canvas, cols, rows, value) {  // value(i) in [0, 1] -> white (0) to blue (1), row by row
  canvas.width = cols; canvas.height = rows;
  if (rows * cols === 0) return;
  const ctx = canvas.getContext("2d"), image = ctx.createImageData(cols, rows), px = image.data;
  for (let i = 0; i < rows * cols; i++) {
    const shade = Math.round(255 * (1 - Math.min(1, value(i))));
    px[4 * i] = shade; px[4 * i + 1] = shade; px[4 * i + 2] = 255; px[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}
function headColour(h, n) { return "hsl(" + Math.round(360 * h / Math.max(n, 1)) + ", 80%, 40%)"; }

// ---- the stored weights: per layer, rows (head h, query q) = h * T + q, each a run of (key, weight)
function rowsOf(v, l) {  // decoded on first use, so a page with many layers opens at once
  const view = VIEWS[v], layer = view.layers[l];
  if (!layer.rows) {
    const T = view.queries.length, n = layer.n_head * T, bytes = decode(layer.weights);
    const words = new Uint16Array(bytes.buffer, 0, bytes.length / 2), start = new Uint32Array(n + 1);
    for (let r = 0; r < n; r++) start[r + 1] = start[r] + words[r];
    const kept = start[n];
    layer.rows = { T, start, lost: words.subarray(n, 2 * n), keys: words.subarray(2 * n, 2 * n + kept),
      weights: words.subarray(2 * n + kept, 2 * n + 2 * kept) };
  }
  return layer.rows;
}
function eachWeight(rows, h, q, fn) {  // fn(key, weight) for the kept weights of one row
  const r = h * rows.T + q;
  for (let i = rows.start[r]; i < rows.start[r + 1]; i++) fn(rows.keys[i], rows.weights[i] / LEVELS);
}
function weight(rows, h, q, k) {
  let found = 0;
  eachWeight(rows, h, q, (key, w) => { if (key === k) found = w; });
  return found;
}
function selected() { return state.heads.flatMap((on, h) => (on ? [h] : [])); }

// ---- model view: one grid per view, a row per layer, a thumbnail per head
function statRange(view, stat) {
  const values = view.layers.flatMap((layer) => layer.stats[stat] || []).filter((x) => x !== null);
  return values.length ? { min: Math.min(...values), max: Math.max(...values) } : null;
}
function makeCell(view, v, l, h, pixels, range) {
  const layer = view.layers[l], cell = element("div", "cell"), canvas = element("canvas");
  Object.assign(cell.dataset, { view: v, layer: l, head: h });
  paint(canvas, view.thumb.cols, view.thumb.rows, (i) => pixels[i] / 255);
  const value = state.stat && layer.stats[state.stat] ? layer.stats[state.stat][h] : null;
  const label = element("span");
  label.textContent = value === null ? String(h) : h + ": " + value.toFixed(2);
  if (value !== null && range) {
    const share = range.max > range.min ? (value - range.min) / (range.max - range.min) : 1;
    cell.style.background = "rgba(255, 127, 14, " + (0.1 + 0.8 * share).toFixed(3) + ")";
  }
  cell.title = layer.name + " head " + h + (value === null ? "" : ", " + statLabel(state.stat) + " " + value);
  cell.append(canvas, label);
  return cell;
}
function buildModel() {
  const parts = [];
  VIEWS.forEach((view, v) => {
    if (!view.thumbBytes) view.thumbBytes = decode(view.thumb.data);
    const size = view.thumb.rows * view.thumb.cols, range = state.stat ? statRange(view, state.stat) : null;
    const n_head = Math.max(0, ...view.layers.map((layer) => layer.n_head));
    const title = element("h2"), grid = element("div", "grid");
    title.textContent = view.title + ": " + view.layers.length + " layers x " + n_head + " heads";
    grid.dataset.view = v;
    grid.style.gridTemplateColumns = "auto repeat(" + n_head + ", 62px)";
    let offset = 0;  // thumbnails lie layer by layer, head by head
    view.layers.forEach((layer, l) => {
      const name = element("div", "rowname"), order = [...Array(layer.n_head).keys()];
      name.textContent = layer.name;
      const values = layer.stats[state.stat];
      if (state.sort && values) order.sort((a, b) => (values[a] ?? Infinity) - (values[b] ?? Infinity) || a - b);
      grid.append(name, ...order.map((h) => makeCell(view, v, l, h,
        view.thumbBytes.subarray((offset + h) * size, (offset + h + 1) * size), range)));
      offset += layer.n_head;
    });
    parts.push(title, grid);
  });
  $("model").replaceChildren(...parts);
}

// ---- detailed views: one layer, the selected heads
function fillSelect(select, labels, value) {
  select.replaceChildren(...labels.map((label, i) => { const o = element("option");
    o.value = String(i); o.textContent = label; return o; }));
  select.value = String(value);
}
function buildHeads(n_head) {
  const buttons = [...Array(n_head).keys()].map((h) => { const b = element("button");
    b.textContent = String(h); b.dataset.head = String(h); b.title = "click: show or hide; double-click: only this";
    return b; });
  const all = element("button"), none = element("button");
  all.textContent = "all"; all.dataset.head = "all"; none.textContent = "none"; none.dataset.head = "none";
  $("heads").replaceChildren(document.createTextNode("heads "), ...buttons, all, none);
  paintHeads();
}
function paintHeads() {  // in place, so that a double-click lands on the button its first click hit
  for (const b of $("heads").querySelectorAll("button")) {
    const h = Number(b.dataset.head), on = state.heads[h] === true;
    b.className = on ? "on" : "";
    b.style.background = on ? headColour(h, state.heads.length) : "";
  }
}
function setup() {
  const view = VIEWS[state.view];
  fillSelect($("view"), VIEWS.map((v) => v.title), state.view);
  state.layer = Math.min(state.layer, view.layers.length - 1);
  fillSelect($("layer"), view.layers.map((l) => l.name), state.layer);
  const n_head = view.layers[state.layer].n_head;
  if (state.heads.length !== n_head) state.heads = Array(n_head).fill(true);
  buildHeads(n_head);
  if (state.tokensOf !== state.view) {
    for (const [id, tokens, side] of [["queries", view.queries, "q"], ["keys", view.keys, "k"]]) {
      $(id).replaceChildren(...tokens.map((t, i) => { const span = element("span", "tok" + promptClass(view, i, side));
        span.textContent = show(t); span.dataset.side = side; span.dataset.index = i; return span; }));
    }
    buildMatrixLabels(view);
    state.tokensOf = state.view;
  }
  state.hover = null;
  draw();
}
function promptClass(view, i, side) {  // generated tokens (a GPT's page) are set apart from the prompt
  return generatedClass(view, i, side) + documentClass(view, i, side);
}
function generatedClass(view, i, side) {
  const n = view.prompt_length;
  if (n === null || n === undefined || (side === "k" && view.cross)) return "";
  return i < n ? "" : i === n ? " gen first-gen" : " gen";
}
function documentsOf(view, side) { return (side === "q" ? view.query_documents : view.key_documents) || null; }
function documentClass(view, i, side) {  // packed documents: alternate shades, a rule where each one starts
  const docs = documentsOf(view, side);
  if (!docs) return "";
  return (docs[i] % 2 ? " doc-odd" : " doc-even") + (i > 0 && docs[i] !== docs[i - 1] ? " doc-start" : "");
}
function documentLabel(view, i, side) {
  const docs = documentsOf(view, side);
  return docs ? " (document " + docs[i] + ")" : "";
}
function buildMatrixLabels(view) {  // query tokens down the left, key tokens (turned) along the top
  const cell = matrixCell(view), every = Math.ceil(9 / cell);  // a label every `every` cells stays legible
  for (const [id, tokens, side] of [["mqueries", view.queries, "q"], ["mkeys", view.keys, "k"]]) {
    $(id).replaceChildren(...tokens.map((t, i) => { const label = element("span", "mlabel" + promptClass(view, i, side));
      label.textContent = i % every === 0 ? show(t) : "";
      label.title = i + " " + JSON.stringify(t);
      label.style[side === "q" ? "height" : "width"] = cell + "px";
      label.style.fontSize = Math.min(12, Math.max(9, cell - 2)) + "px"; return label; }));
  }
}
function matrixCell(view) { return Math.max(2, Math.min(16, Math.floor(800 / Math.max(view.queries.length, view.keys.length, 1)))); }
function draw() {
  $("lines").style.display = state.mode === "lines" ? "flex" : "none";
  $("matrixbox").style.display = state.mode === "matrix" ? "grid" : "none";
  $("info").textContent = HINTS[state.mode] || "";
  if (state.mode === "lines") drawLines(); else if (state.mode === "matrix") drawMatrix();
}
function hoveredLinks(rows, heads, T) {  // [head, query, key, weight] of what is to be drawn
  const links = [], hover = state.hover;
  for (const h of heads) {
    if (hover && hover.side === "q") {
      eachWeight(rows, h, hover.index, (k, w) => links.push([h, hover.index, k, w]));
      continue;
    }
    for (let q = 0; q < T; q++) {
      eachWeight(rows, h, q, (k, w) => { if (!hover || k === hover.index) links.push([h, q, k, w]); });
    }
  }
  return links;
}
function drawLines() {
  const view = VIEWS[state.view], rows = rowsOf(state.view, state.layer), T = view.queries.length;
  const S = view.keys.length, n_head = view.layers[state.layer].n_head, hover = state.hover;
  const canvas = $("wires"), ctx = canvas.getContext("2d"), qSpans = $("queries").children, kSpans = $("keys").children;
  canvas.width = WIRES; canvas.height = ROW * Math.max(T, S);
  for (const span of [...qSpans, ...kSpans]) span.style.background = "";
  const links = hoveredLinks(rows, selected(), T);
  let strongest = hover ? 0 : 1;
  if (hover) for (const link of links) strongest = Math.max(strongest, link[3]);
  const scale = strongest > 0 ? 1 / strongest : 1;  // a hovered token's links relative to its strongest one
  const drawn = Array(n_head).fill(0), lit = new Float32Array(hover ? (hover.side === "q" ? S : T) : 0);
  ctx.lineWidth = hover ? 2 : 1;
  for (const [h, q, k, w] of links) {
    const a = w * scale;
    if (a < 0.004) continue;
    ctx.strokeStyle = headColour(h, n_head); ctx.globalAlpha = Math.min(1, a);
    ctx.beginPath(); ctx.moveTo(0, q * ROW + ROW / 2); ctx.lineTo(WIRES, k * ROW + ROW / 2); ctx.stroke();
    drawn[h]++;
    if (hover) { const i = hover.side === "q" ? k : q; lit[i] = Math.max(lit[i], a); }
  }
  canvas.dataset.drawn = drawn.join(",");
  const litSpans = hover && hover.side === "q" ? kSpans : qSpans;
  lit.forEach((a, i) => { if (a > 0) litSpans[i].style.background = "rgba(255, 127, 14, " + Math.min(1, a) + ")"; });
  if (hover) (hover.side === "q" ? qSpans : kSpans)[hover.index].style.background = "#ddd";
}
function drawMatrix() {  // the mean of the selected heads, one canvas pixel per weight, scaled up by CSS
  const view = VIEWS[state.view], rows = rowsOf(state.view, state.layer), T = view.queries.length;
  const S = view.keys.length, heads = selected(), canvas = $("matrix");
  const cell = matrixCell(view);
  canvas.style.width = S * cell + "px"; canvas.style.height = T * cell + "px"; canvas.dataset.cell = cell;
  const mean = new Float32Array(T * S);
  for (const h of heads) {
    for (let q = 0; q < T; q++) eachWeight(rows, h, q, (k, w) => { mean[q * S + k] += w / heads.length; });
  }
  paint(canvas, S, T, (i) => mean[i]);
  paint($("mscalebar"), 100, 1, (i) => i / 99);  // the colour of a weight from 0 to 1
}

// ---- what the pointer is on
function describeQuery(q) {
  const view = VIEWS[state.view], rows = rowsOf(state.view, state.layer), heads = selected();
  const parts = heads.slice(0, 4).map((h) => {
    let best = -1, bestWeight = 0;
    eachWeight(rows, h, q, (k, w) => { if (w > bestWeight) { best = k; bestWeight = w; } });
    return "head " + h + " -> " + (best < 0 ? "nothing kept" : "key " + best + " " + JSON.stringify(view.keys[best]) +
      " " + bestWeight.toFixed(3)) + ", not shown " + (rows.lost[h * rows.T + q] / LEVELS).toFixed(3);
  });
  return "query " + q + " " + JSON.stringify(view.queries[q]) + documentLabel(view, q, "q") + ": " +
    (parts.join("; ") || "no head selected") +
    (heads.length > 4 ? "; ..." : "");
}
function describeKey(k) {
  const view = VIEWS[state.view], rows = rowsOf(state.view, state.layer);
  let best = -1, bestHead = -1, bestWeight = 0;
  for (const h of selected()) for (let q = 0; q < rows.T; q++) {
    const w = weight(rows, h, q, k);
    if (w > bestWeight) { best = q; bestHead = h; bestWeight = w; }
  }
  const text = "key " + k + " " + JSON.stringify(view.keys[k]) + documentLabel(view, k, "k");
  return best < 0 ? text + ": no kept weight" : text + " is attended most by query " + best + " " +
    JSON.stringify(view.queries[best]) + " (head " + bestHead + ", " + bestWeight.toFixed(3) + ")";
}
function hoverToken(event) {
  const span = event.target.closest(".tok");
  state.hover = span ? { side: span.dataset.side, index: Number(span.dataset.index) } : null;
  if (span) {
    const i = state.hover.index;
    $("info").textContent = state.hover.side === "q" ? describeQuery(i) : describeKey(i);
  }
  drawLines();
}
function hoverMatrix(event) {
  const cell = Number($("matrix").dataset.cell), view = VIEWS[state.view], rows = rowsOf(state.view, state.layer);
  const q = Math.floor(event.offsetY / cell), k = Math.floor(event.offsetX / cell), heads = selected();
  if (q < 0 || q >= view.queries.length || k < 0 || k >= view.keys.length || !heads.length) return;
  const mean = heads.reduce((sum, h) => sum + weight(rows, h, q, k), 0) / heads.length;
  $("info").textContent = "query " + q + " " + JSON.stringify(view.queries[q]) + documentLabel(view, q, "q") +
    " -> key " + k + " " + JSON.stringify(view.keys[k]) + documentLabel(view, k, "k") + ": " + mean.toFixed(3) +
    " (mean of " + heads.length + " heads)";
}

// ---- controls
function setMode(mode) {
  state.mode = mode;
  if (mode !== "model") state.detail = mode;
  document.querySelector("input[name=mode][value=" + mode + "]").checked = true;
  document.body.className = mode === "model" ? "model" : "detail";
  const view = VIEWS[state.view], n = view.prompt_length;
  let generated = n === null || n === undefined ? "" : " The prompt is tokens 0.." + (n - 1) +
    "; the tokens after the line (in italics) were generated.";
  if (view.query_documents && view.query_documents.length)
    generated += " " + (view.query_documents[view.query_documents.length - 1] + 1) + " packed documents " +
      "(shaded in turn, a rule where each starts): a token attends only within its own.";
  $("note").textContent = mode === "model" ? "click a head to open it. Thumbnails: each row scaled to its strongest " +
    "cell." + generated : view.note + generated;
  if (mode === "model") buildModel(); else setup();
}
function openHead(v, l, h) {
  state.view = v; state.layer = l;
  state.heads = Array(VIEWS[v].layers[l].n_head).fill(false); state.heads[h] = true;
  setMode(state.detail);
}
function clickHead(event, only) {
  const key = event.target.dataset && event.target.dataset.head;
  if (key === undefined) return;
  if (key === "all" || key === "none") state.heads = state.heads.map(() => key === "all");
  else if (only) state.heads = state.heads.map((on, h) => h === Number(key));
  else state.heads[Number(key)] = !state.heads[Number(key)];
  paintHeads();
  draw();
}
$("model").addEventListener("click", (event) => {
  const cell = event.target.closest(".cell");
  if (cell) openHead(Number(cell.dataset.view), Number(cell.dataset.layer), Number(cell.dataset.head));
});
$("heads").addEventListener("click", (event) => clickHead(event, false));
$("heads").addEventListener("dblclick", (event) => clickHead(event, true));
$("lines").addEventListener("mouseover", hoverToken);
$("lines").addEventListener("mouseleave", () => { state.hover = null; drawLines(); });
$("matrix").addEventListener("mousemove", hoverMatrix);
$("view").addEventListener("change", (e) => {
  state.view = Number(e.target.value); state.layer = 0; setMode(state.mode);
});
$("layer").addEventListener("change", (e) => { state.layer = Number(e.target.value); setup(); });
$("stat").addEventListener("change", (e) => { state.stat = e.target.value; buildModel(); });
$("sort").addEventListener("change", (e) => { state.sort = e.target.checked; buildModel(); });
for (const radio of document.querySelectorAll("input[name=mode]"))
  radio.addEventListener("change", (e) => setMode(e.target.value));
const STATS = [...new Set(VIEWS.flatMap((view) => view.layers.flatMap((layer) => Object.keys(layer.stats))))];
$("stat").append(...STATS.map((stat) => { const o = element("option"); o.value = stat;
  o.textContent = statLabel(stat); return o; }));
setMode("model");
document.body.setAttribute("data-status", "ready");
