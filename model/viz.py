"""Looking at attention maps: PNG heatmap grids, one self-contained HTML viewer, raw maps in .npz.

    views = views_from_maps(cache_or_maps, tokens)      # group layers by stack: self, encoder, cross
    write_attention(out_dir, views)                     # *.png, attention.html, attention.npz

matplotlib is imported only when PNGs are drawn. The HTML viewer needs no network: its script,
style and data are inline, and token text reaches the page only as JSON read with textContent.
"""

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch

from model.config import ConfigError


@dataclass
class AttentionView:
    """The maps of one stack of attention layers, sharing their query and key tokens."""

    title: str  # e.g. "self-attention", "decoder cross-attention"
    query_tokens: list[str]
    key_tokens: list[str]
    layers: dict[str, np.ndarray]  # attention module name -> (n_head, T, S)


def display_token(token: str) -> str:
    """A token made visible in a label: spaces, newlines and tabs get a printable symbol."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace(" ", "\u2423") or "\u2205"


def views_from_maps(maps: dict[str, torch.Tensor], tokens: list[str], source_tokens: list[str] | None = None,
                    batch_index: int = 0) -> list[AttentionView]:
    """Group `...pattern` maps (B, nh, T, S) by stack; queries/keys get `tokens` or `source_tokens`.

    `blocks.N.attn` and `decoder.blocks.N.attn` attend over `tokens`; `encoder.blocks.N.attn` over
    `source_tokens`; `...cross_attn` from `tokens` to `source_tokens`.
    """
    groups: dict[str, AttentionView] = {}
    for name, pattern in maps.items():
        if not name.endswith(".pattern"):
            continue
        module = name.removesuffix(".pattern")
        stack = re.sub(r"blocks\.\d+\.", "", module)  # "decoder.blocks.3.cross_attn" -> "decoder.cross_attn"
        cross, encoder = stack.endswith("cross_attn"), stack.startswith("encoder.")
        if (cross or encoder) and source_tokens is None:
            raise ValueError(f"{name} attends over a source sequence; pass source_tokens.")
        queries = source_tokens if encoder else tokens
        keys = source_tokens if (cross or encoder) else tokens
        if stack not in groups:
            prefix = stack.split(".")[0] + " " if "." in stack else ""
            groups[stack] = AttentionView(prefix + ("cross-attention" if cross else "self-attention"),
                                          list(queries), list(keys), {})
        array = pattern[batch_index].detach().float().cpu().numpy()  # (nh, T, S)
        if array.shape[1:] != (len(queries), len(keys)):
            raise ValueError(f"{name} is {array.shape[1]} x {array.shape[2]} but {len(queries)} query and "
                             f"{len(keys)} key tokens were given.")
        groups[stack].layers[module] = array
    return list(groups.values())


# ----------------------------------------------------------------------------------------------
# PNG heatmaps


def save_heatmaps(view: AttentionView, out_dir: str, max_labels: int = 80) -> list[str]:
    """One PNG per layer: a grid with one panel per head, query tokens down, key tokens across."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("matplotlib draws the PNG heatmaps; install it with `pip install matplotlib`.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, maps in view.layers.items():
        fig = heatmap_figure(maps, view.query_tokens, view.key_tokens, f"{view.title}: {name}", max_labels)
        path = os.path.join(out_dir, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def heatmap_figure(maps: np.ndarray, query_tokens: list[str], key_tokens: list[str], title: str,
                   max_labels: int = 80):
    """A matplotlib figure of maps (n_head, T, S): one panel per head, token labels on both axes."""
    import matplotlib.pyplot as plt

    n_head, T, S = maps.shape
    cols = min(n_head, 4)
    rows = math.ceil(n_head / cols)
    panel = min(12.0, max(3.0, 0.14 * max(T, S)))  # inches: room for the labels of long sequences
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols, panel * rows + 0.6), squeeze=False)
    font = max(4, min(9, int(700 / max(T, S, 1))))
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.axis("off")
            continue
        ax.imshow(maps[h], cmap="viridis", vmin=0.0, vmax=max(float(maps[h].max()), 1e-6),
                  interpolation="nearest", aspect="auto")
        ax.set_title(f"head {h}", fontsize=10)
        for axis, tokens, set_ticks, set_labels in ((0, query_tokens, ax.set_yticks, ax.set_yticklabels),
                                                    (1, key_tokens, ax.set_xticks, ax.set_xticklabels)):
            step = math.ceil(len(tokens) / max_labels)
            ticks = list(range(0, len(tokens), step))
            set_ticks(ticks)
            set_labels([display_token(tokens[i]) for i in ticks], fontsize=font, rotation=90 if axis else 0,
                       parse_math=False)  # a token such as "$$" is text, not a formula
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# HTML viewer


def viewer_html(views: list[AttentionView], title: str = "attention") -> str:
    """A self-contained HTML page showing the views (weights stored as bytes: value * 255)."""
    data = []
    for view in views:
        layers = []
        for name, maps in view.layers.items():
            quantized = np.clip(np.rint(maps * 255.0), 0, 255).astype(np.uint8)
            layers.append({"name": name, "n_head": int(maps.shape[0]),
                           "weights": base64.b64encode(quantized.tobytes()).decode("ascii")})
        data.append({"title": view.title, "queries": view.query_tokens, "keys": view.key_tokens, "layers": layers})
    payload = json.dumps(data, ensure_ascii=True)
    # inside <script>, "</script>" or "<!--" in a token would end or confuse the element: escape the brackets
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    fields = {"__TITLE__": html.escape(title), "__DATA__": payload}  # one pass: a title may say "__DATA__"
    return re.sub("__TITLE__|__DATA__", lambda m: fields[m.group()], VIEWER)


VIEWER = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 16px; color: #222; }
header { display: flex; gap: 14px; flex-wrap: wrap; align-items: center; margin-bottom: 10px; }
h1 { font-size: 16px; margin: 0 12px 0 0; }
#lines { position: relative; display: flex; }
.col { display: flex; flex-direction: column; }
.tok { height: 18px; line-height: 18px; padding: 0 4px; white-space: pre; font-family: monospace;
       cursor: default; border-radius: 2px; }
.left .tok { text-align: right; }
#matrix { display: none; }
#info { min-height: 18px; margin: 6px 0; font-family: monospace; white-space: pre; }
#errors { color: #b00; white-space: pre-wrap; }
</style></head>
<body data-status="loading">
<header><h1>__TITLE__</h1>
<label>view <select id="view"></select></label>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
<label><input type="radio" name="mode" value="lines" checked> lines</label>
<label><input type="radio" name="mode" value="matrix"> matrix</label>
</header>
<div id="info">hover a token to see where it attends</div>
<div id="lines"><div class="col left" id="queries"></div><canvas id="wires"></canvas>
<div class="col right" id="keys"></div></div>
<canvas id="matrix"></canvas>
<pre id="errors"></pre>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
window.onerror = function (message, source, line) {
  document.getElementById("errors").textContent += "error: " + message + " (line " + line + ")\\n";
  document.body.setAttribute("data-status", "error");
};
const VIEWS = JSON.parse(document.getElementById("data").textContent);
const ROW = 18, WIRES = 220;
const $ = (id) => document.getElementById(id);
const state = { view: 0, layer: 0, head: 0, mode: "lines", hover: null };

function show(token) {  // spaces and control characters made visible; text only, never markup
  return token.replace(/\\n/g, "\\\\n").replace(/\\t/g, "\\\\t").replace(/\\r/g, "\\\\r")
    .replace(/ /g, "\\u2423") || "\\u2205";
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
</script>
</body></html>
"""


# ----------------------------------------------------------------------------------------------
# Writing everything


def save_npz(views: list[AttentionView], path: str) -> None:
    """Raw float maps: one array (n_head, T, S) per layer name, plus each view's tokens."""
    arrays = {}
    for i, view in enumerate(views):
        arrays.update({name: maps.astype(np.float32) for name, maps in view.layers.items()})
        arrays[f"view{i}.query_tokens"] = np.array(view.query_tokens, dtype=str)
        arrays[f"view{i}.key_tokens"] = np.array(view.key_tokens, dtype=str)
    np.savez_compressed(path, **arrays)


def write_attention(out_dir: str, views: list[AttentionView], title: str = "attention",
                    png: bool = True) -> list[str]:
    """Write PNGs (one per layer), attention.html and attention.npz into out_dir; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    if png:
        for view in views:
            paths += save_heatmaps(view, out_dir)
    html_path = os.path.join(out_dir, "attention.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(viewer_html(views, title))
    npz_path = os.path.join(out_dir, "attention.npz")
    save_npz(views, npz_path)
    return paths + [html_path, npz_path]


def log_attention(model, batch: dict, tokenizer, step: int, wandb_log: bool = False) -> None:
    """Per-head statistics on the first example of `batch`, printed as a table; with wandb_log, logged
    to wandb too, with one heatmap image per layer (train.py --attn_stats_interval=N)."""
    from model.attention_maps import head_stats_all, stats_table

    first = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(**first, names_filter="*attn.pattern", device="cpu")
    finally:
        model.train(was_training)
    stats = head_stats_all(cache)
    print(f"attention at step {step}:\n{stats_table(stats)}")
    if not wandb_log:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import wandb

    record = {f"attn/{name}.{h}/{stat}": float(v) for name, s in stats.items()
              for stat, values in s.items() for h, v in enumerate(values)}
    ids = first["idx"][0].tolist() if "idx" in first else []

    def labels(n: int) -> list[str]:  # token text where the map runs over idx, positions otherwise
        return [tokenizer.decode([i]) for i in ids] if len(ids) == n else [str(i) for i in range(n)]

    for name, pattern in cache.items():
        maps = pattern[0].float().numpy()
        fig = heatmap_figure(maps, labels(maps.shape[1]), labels(maps.shape[2]), name)
        record[f"attn/{name.removesuffix('.pattern')}/pattern"] = wandb.Image(fig)
        plt.close(fig)
    wandb.log(record, step=step)
