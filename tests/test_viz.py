"""Heatmaps, npz, and the HTML viewer loaded in a real headless browser (Debian's chromium)."""

import base64
import html
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import torch

from conftest import run_script
from data.tokenizer import CharTokenizer
from model import GPT, GPTConfig, Seq2Seq, Seq2SeqConfig, save_checkpoint
from model.generation import pack
from training.config import SampleConfig, to_dict
from weights.common import ConfigError
from lens import viewer as viewer_module
from lens.heatmaps import display_token, views_from_maps, viewer_html, write_attention
from lens.recorder import head_stats
from lens.viewer import AttentionViewer

HOSTILE = ["<img src=x onerror=alert(1)>", "</script><script>document.title='pwned'</script>", "<!--", "a&amp;b",
           " \n", "\u2028", '"', ""]

# Drives the page as a user would: the model view, a click on a cell, the head toggles, a hover, the matrix.
PROBE = """<pre id="probe"></pre><script>
const out = {};
try {
  const $$ = (sel) => [...document.querySelectorAll(sel)];
  const click = (node) => node.dispatchEvent(new MouseEvent("click", {bubbles: true}));
  const hueCounts = (canvas, n) => {  // opaque pixels of the canvas by nearest head colour (hue 360 h / n)
    const counts = Array(n).fill(0), px = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] < 40) continue;
      const [r, g, b] = [px[i] / 255, px[i + 1] / 255, px[i + 2] / 255];
      const max = Math.max(r, g, b), d = max - Math.min(r, g, b);
      if (d < 0.2) continue;
      let hue = max === r ? ((g - b) / d) % 6 : max === g ? (b - r) / d + 2 : (r - g) / d + 4;
      hue = (hue * 60 + 360) % 360;
      for (let h = 0; h < n; h++) {
        const diff = Math.abs(hue - 360 * h / n);
        if (Math.min(diff, 360 - diff) < 12) counts[h]++;
      }
    }
    return counts;
  };
  out.status = document.body.getAttribute("data-status");
  out.titles = VIEWS.map((v) => v.title);
  out.gridCells = $$(".grid").map((grid) => grid.querySelectorAll(".cell").length);
  out.blankThumbs = $$(".cell canvas").filter((c) => !c.getContext("2d").getImageData(0, 0, c.width, c.height).data
    .some((x, i) => i % 4 !== 3 && x < 250)).length;
  const stat = document.getElementById("stat");
  out.stats = [...stat.options].map((o) => o.value);
  stat.value = "entropy"; stat.dispatchEvent(new Event("change"));
  const sort = document.getElementById("sort");
  sort.checked = true; sort.dispatchEvent(new Event("change"));
  const firstGrid = document.querySelector(".grid");
  out.sorted = VIEWS[0].layers.map((layer, l) =>
    [...firstGrid.querySelectorAll(".cell[data-layer='" + l + "']")].map((c) => Number(c.dataset.head)));
  out.coloured = firstGrid.querySelectorAll(".cell[style*=background]").length;
  const v = VIEWS.length - 1, l = VIEWS[v].layers.length - 1;
  click(document.querySelector(".cell[data-view='" + v + "'][data-layer='" + l + "'][data-head='1']"));
  out.mode = document.body.className;
  out.opened = [document.getElementById("view").value, document.getElementById("layer").value];
  out.headsOn = $$("#heads button.on").map((b) => b.textContent);
  out.drawnOne = document.getElementById("wires").dataset.drawn;
  out.queries = $$("#queries .tok").map((s) => s.textContent);
  out.keys = $$("#keys .tok").map((s) => s.textContent);
  click(document.querySelector("#heads button[data-head='0']"));
  out.headsOnTwo = $$("#heads button.on").map((b) => b.textContent);
  document.querySelectorAll("#queries .tok")[2].dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
  out.info = document.getElementById("info").textContent;
  out.drawnTwo = document.getElementById("wires").dataset.drawn;
  out.hues = hueCounts(document.getElementById("wires"), VIEWS[v].layers[l].n_head);
  out.lit = $$("#keys .tok").filter((s) => s.style.background).length;
  const matrix = document.querySelector("input[value=matrix]");
  matrix.checked = true; matrix.dispatchEvent(new Event("change"));
  const canvas = document.getElementById("matrix"), cell = Number(canvas.dataset.cell), box = canvas.getBoundingClientRect();
  out.matrix = [canvas.width, canvas.height, canvas.style.width, cell];
  canvas.dispatchEvent(new MouseEvent("mousemove", {bubbles: true, clientX: box.left + cell + 1, clientY: box.top + 2 * cell + 1}));
  out.matrixInfo = document.getElementById("info").textContent;
  out.note = document.getElementById("note").textContent;
  const last = document.querySelector("#heads button[data-head='" + (VIEWS[v].layers[l].n_head - 1) + "']");
  click(last); click(last); last.dispatchEvent(new MouseEvent("dblclick", {bubbles: true}));  // only this head
  out.headsOnly = $$("#heads button.on").map((b) => b.textContent);
  out.images = document.querySelectorAll("img").length;
  out.scripts = document.querySelectorAll("script").length;
  out.docTitle = document.title;
} catch (e) { out.error = String(e) + " " + e.stack; }
out.errors = document.getElementById("errors").textContent;
document.getElementById("probe").textContent = JSON.stringify(out);
</script></body>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("the viewer test needs a headless browser: install Debian's chromium (apt-get install -y chromium).")


def load_in_browser(page: str, tmp_path, probe: str = PROBE) -> dict:
    """Open the page (with the probe script appended) in headless chromium; return what the probe saw."""
    path = tmp_path / "probe.html"
    assert page.count("</body>") == 1
    path.write_text(page.replace("</body>", probe), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", path.as_uri()],
            capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no probe output from chromium:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def fake_maps(T: int, S: int, n_head: int = 2) -> torch.Tensor:
    scores = torch.randn(1, n_head, T, S)
    return torch.softmax(scores, -1)


def test_views_group_self_and_cross_attention():
    T, S = 3, 4
    maps = {"encoder.blocks.0.attn.pattern": fake_maps(S, S), "decoder.blocks.0.attn.pattern": fake_maps(T, T),
            "decoder.blocks.0.cross_attn.pattern": fake_maps(T, S),
            "decoder.blocks.1.cross_attn.pattern": fake_maps(T, S),
            "decoder.blocks.0.attn.q": torch.randn(1, 2, T, 4)}
    views = views_from_maps(maps, list("abc"), list("wxyz"))
    assert [v.title for v in views] == ["encoder self-attention", "decoder self-attention", "decoder cross-attention"]
    cross = views[2]
    assert cross.query_tokens == list("abc") and cross.key_tokens == list("wxyz")
    assert list(cross.layers) == ["decoder.blocks.0.cross_attn", "decoder.blocks.1.cross_attn"]
    assert cross.layers["decoder.blocks.1.cross_attn"].shape == (2, T, S)
    with pytest.raises(ValueError, match="source_tokens"):
        views_from_maps(maps, list("abc"))
    with pytest.raises(ValueError, match="key tokens"):
        views_from_maps({"blocks.0.attn.pattern": fake_maps(T, T)}, list("ab"))


def padded_runs():
    """A tiny GPT and Seq2Seq, padded batches of 3 rows (GPT left-padded, Seq2Seq right-padded) and each row's
    caches alone: (model kind, batch cache, masks, rows' ids, rows' caches)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=16)).eval()
    rows = [torch.randint(1, 20, (n,), generator=g) for n in (9, 4, 6)]
    idx, mask = pack(rows)  # left-padded with id 0
    _, cache = gpt.run_with_cache(idx, attention_mask=mask)
    alone = [gpt.run_with_cache(r[None])[1] for r in rows]
    s2s = Seq2Seq(Seq2SeqConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=20, block_size=8)).eval()
    srcs = [torch.randint(1, 20, (n,), generator=g) for n in (5, 3, 6)]
    tgts = [torch.randint(1, 20, (n,), generator=g) for n in (4, 6, 2)]
    src, src_mask = (x.flip(1) for x in pack([r.flip(0) for r in srcs]))  # right-padded
    tgt, tgt_mask = (x.flip(1) for x in pack([r.flip(0) for r in tgts]))
    _, s2s_cache = s2s.run_with_cache(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)
    s2s_alone = [s2s.run_with_cache(s[None], t[None])[1] for s, t in zip(srcs, tgts)]
    return (idx, mask, rows, cache, alone), (src, src_mask, srcs, tgt, tgt_mask, tgts, s2s_cache, s2s_alone)


def names(ids: torch.Tensor, mask: torch.Tensor | None = None) -> list[str]:
    return [f"t{i}" if mask is None or keep else "[PAD]" for i, keep in
            zip(ids.tolist(), [1] * len(ids) if mask is None else mask.tolist())]


def test_views_of_a_padded_row_leave_its_padding_out(tmp_path):
    (idx, mask, rows, cache, alone), s2s = padded_runs()
    for i, row in enumerate(rows):
        views = views_from_maps(cache, names(idx[i], mask[i]), batch_index=i, attention_mask=mask)
        [by_itself] = views_from_maps(alone[i], names(row))
        assert views[0].query_tokens == views[0].key_tokens == names(row)
        for name, maps in by_itself.layers.items():
            assert maps.shape == views[0].layers[name].shape == (2, len(row), len(row))
            assert np.allclose(views[0].layers[name], maps, atol=1e-6), name
        real_only = views_from_maps(cache, names(row), batch_index=i, attention_mask=mask)  # the real tokens alone
        assert real_only[0].query_tokens == names(row)
        assert all(np.array_equal(real_only[0].layers[n], m) for n, m in views[0].layers.items())
        paths = write_attention(str(tmp_path / f"row{i}"), views, png=False)
        page = open(paths[0], encoding="utf-8").read()
        [data] = page_data(page)
        assert data["queries"] == data["keys"] == names(row)
        assert "[PAD]" not in page and "[PAD]" not in AttentionViewer(views).html()  # nowhere in the page
        saved = np.load(paths[1])
        assert list(saved["view0.query_tokens"]) == list(saved["view0.key_tokens"]) == names(row)
    src, src_mask, srcs, tgt, tgt_mask, tgts, s2s_cache, s2s_alone = s2s
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        views = views_from_maps(s2s_cache, names(tgt[i], tgt_mask[i]), names(src[i], src_mask[i]), batch_index=i,
                                attention_mask=tgt_mask, source_mask=src_mask)
        by_itself = views_from_maps(s2s_alone[i], names(t), names(s))
        assert [v.title for v in views] == ["encoder self-attention", "decoder self-attention",
                                            "decoder cross-attention"]
        for view, single in zip(views, by_itself):
            assert (view.query_tokens, view.key_tokens) == (single.query_tokens, single.key_tokens)
            assert "[PAD]" not in view.query_tokens + view.key_tokens
            for name, maps in single.layers.items():
                assert np.allclose(view.layers[name], maps, atol=1e-6), name
        assert views[2].layers["decoder.blocks.0.cross_attn"].shape == (2, len(t), len(s))


def test_bad_padding_masks_are_clear_errors():
    (idx, mask, rows, cache, alone), s2s = padded_runs()
    tokens = names(idx[1], mask[1])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 8\) but the batch is \(3, 9\)"):
        views_from_maps(cache, tokens, batch_index=1, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match="marks 4 of row 1's 9 tokens as real but 5 tokens were given"):
        views_from_maps(cache, tokens[4:], batch_index=1, attention_mask=mask)
    with pytest.raises(ValueError, match="only 1 .real token. and 0"):
        views_from_maps(cache, tokens, batch_index=1, attention_mask=mask * 2)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="a row of attention_mask is all padding"):
        views_from_maps(cache, tokens, batch_index=1, attention_mask=empty)
    src, src_mask, srcs, tgt, tgt_mask, tgts, s2s_cache, _ = s2s
    with pytest.raises(ValueError, match=r"source_mask has shape \(3, 5\) but the batch is \(3, 6\)"):
        views_from_maps(s2s_cache, names(tgt[0]), names(src[0]), source_mask=src_mask[:, :5])
    assert "[PAD]" in tokens and views_from_maps(cache, tokens, batch_index=1)[0].query_tokens == tokens  # no mask


def test_write_attention_files(tmp_path):
    maps = {f"blocks.{i}.attn.pattern": fake_maps(5, 5, n_head=3) for i in range(2)}
    views = views_from_maps(maps, ["a", " ", "\n", "<b>", "d"])
    paths = write_attention(str(tmp_path / "attn"), views)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["attention.html", "attention.npz", "blocks.0.attn.png", "blocks.1.attn.png"]
    for png in ("blocks.0.attn.png", "blocks.1.attn.png"):
        data = (tmp_path / "attn" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    saved = np.load(tmp_path / "attn" / "attention.npz")
    assert np.allclose(saved["blocks.1.attn"], maps["blocks.1.attn.pattern"][0].numpy())
    assert list(saved["view0.query_tokens"]) == ["a", " ", "\n", "<b>", "d"]


def test_heatmap_labels_with_dollar_signs_are_plain_text(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from lens.heatmaps import heatmap_figure

    tokens = ["$$", "$\\frac$", "$x$", " $"]  # BPE tokens: matplotlib would parse them as (broken) formulas
    fig = heatmap_figure(fake_maps(4, 4)[0].numpy(), tokens, tokens, "title")
    fig.savefig(tmp_path / "labels.png")  # drawing parses the labels
    labels = [label.get_text() for label in fig.axes[0].get_xticklabels()]
    assert labels == [display_token(t) for t in tokens]


def test_viewer_placeholders_in_the_title_and_tokens_stay_text():
    page = viewer_html(views_from_maps({"blocks.0.attn.pattern": fake_maps(2, 2)}, ["__TITLE__", "__DATA__"]),
                       title="__DATA__ <&>")
    assert "<title>__DATA__ &lt;&amp;&gt;</title>" in page  # not the maps pasted into the title
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)[0]["queries"] == ["__TITLE__", "__DATA__"]


def test_viewer_model_view_overlay_and_escaping_in_chromium(tmp_path):
    source = ["src", *HOSTILE]
    T, S = len(HOSTILE), len(source)
    maps = {}
    for layer in range(2):
        maps[f"encoder.blocks.{layer}.attn.pattern"] = fake_maps(S, S, n_head=3)
        maps[f"decoder.blocks.{layer}.attn.pattern"] = fake_maps(T, T, n_head=3)
        maps[f"decoder.blocks.{layer}.cross_attn.pattern"] = fake_maps(T, S, n_head=3)
    page = viewer_html(views_from_maps(maps, HOSTILE, source), title="<b>title</b>")
    assert "<img" not in page and page.count("</script>") == 2  # the viewer's two script elements only
    seen = load_in_browser(page, tmp_path)
    assert "error" not in seen and seen["errors"] == "", seen
    assert seen["status"] == "ready"
    assert seen["titles"] == ["encoder self-attention", "decoder self-attention", "decoder cross-attention"]
    # model view: one thumbnail per layer x head in each of the three grids, none blank
    assert seen["gridCells"] == [6, 6, 6] and seen["blankThumbs"] == 0
    assert seen["stats"] == ["", "entropy", "max", "distance"]
    entropy = [head_stats(maps[f"encoder.blocks.{layer}.attn.pattern"])["entropy"] for layer in range(2)]
    assert seen["sorted"] == [torch.argsort(e).tolist() for e in entropy]  # sorted by entropy within each layer
    assert seen["coloured"] == 6
    # a click on the cross-attention grid's layer 1 head 1 opens that head in the lines view
    assert seen["mode"] == "detail" and seen["opened"] == ["2", "1"] and seen["headsOn"] == ["1"]
    assert seen["drawnOne"].split(",")[0] == "0" and int(seen["drawnOne"].split(",")[1]) > 0
    assert seen["queries"] == [display_token(t) for t in HOSTILE]  # tokens stay text
    assert seen["keys"] == [display_token(t) for t in source]
    # toggling head 0 overlays it in its own colour; head 2 stays hidden
    assert seen["headsOnTwo"] == ["0", "1"]
    drawn = [int(n) for n in seen["drawnTwo"].split(",")]
    assert drawn[0] > 0 and drawn[1] > 0 and drawn[2] == 0
    assert seen["hues"][0] > 20 and seen["hues"][1] > 20 and seen["hues"][2] == 0, seen["hues"]
    assert seen["info"].startswith(f"query 2 {json.dumps(HOSTILE[2])}: head 0 -> key ") and seen["lit"] > 0
    assert seen["matrix"] == [S, T, f"{16 * S}px", 16]
    assert seen["matrixInfo"].startswith(f"query 2 {json.dumps(HOSTILE[2])} -> key 1 {json.dumps(source[1])}: ")
    assert seen["note"].startswith("every weight kept")
    assert seen["headsOnly"] == ["2"]  # a double-click shows that head alone
    assert seen["images"] == 0 and seen["scripts"] == 3  # nothing injected (the third is the probe)
    assert seen["docTitle"] == "<b>title</b>"


def page_data(page: str) -> list[dict]:
    """The JSON data embedded in a viewer page."""
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))


def stored_rows(layer: dict, T: int) -> tuple[np.ndarray, np.ndarray, list]:
    """A page layer's stored weights decoded: counts and lost mass (n_head*T,), and each row's {key: weight}."""
    words = np.frombuffer(base64.b64decode(layer["weights"]), dtype="<u2")
    n = layer["n_head"] * T
    counts, lost = words[:n], words[n:2 * n] / 65535
    kept = int(counts.sum())
    keys, weights = words[2 * n:2 * n + kept], words[2 * n + kept:] / 65535
    assert len(weights) == kept
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    return counts, lost, [dict(zip(keys[a:b].tolist(), weights[a:b].tolist())) for a, b in zip(starts, starts[1:])]


def test_viewer_stores_top_weights_lost_mass_and_thumbnails():
    T = 40
    torch.manual_seed(1)
    maps = torch.softmax(torch.randn(1, 2, T, T) * 3, -1)
    maps[0, 1] = 0.0
    maps[0, 1, :, 0] = 1.0  # head 1 attends to the first token only
    views = views_from_maps({"blocks.0.attn.pattern": maps}, [str(i) for i in range(T)])
    small = page_data(viewer_html(views))[0]  # few weights: every one kept, exact to 1/65535
    counts, lost, rows = stored_rows(small["layers"][0], T)
    visible = maps[0, 0] * 65535 >= 0.5  # what rounds to 0 in 16 bits is dropped (and counted as lost)
    assert 0 < (~visible).sum() < T * T / 10
    assert counts[:T].tolist() == visible.sum(-1).tolist() and counts[T:].tolist() == [1] * T
    stored = torch.tensor([[rows[q].get(k, 0.0) for k in range(T)] for q in range(T)])
    assert (stored - maps[0, 0]).abs().max() <= 0.5 / 65535 + 1e-7
    assert np.allclose(lost[:T], (maps[0, 0] * ~visible).sum(-1).numpy(), atol=1e-5)
    with pytest.MonkeyPatch.context() as patch:  # as if the page were long: top 3 weights per row
        patch.setattr(viewer_module, "DENSE_WEIGHTS", 10)
        data = page_data(viewer_html(views, top_k=3))[0]
    counts, lost, rows = stored_rows(data["layers"][0], T)
    assert counts[:T].tolist() == [3] * T and counts[T:].tolist() == [1] * T
    for q in range(T):
        top = torch.topk(maps[0, 0, q], 3)
        assert sorted(rows[q]) == sorted(top.indices.tolist())
        assert abs(lost[q] - (1 - top.values.sum().item())) < 1e-4
    assert np.allclose(lost[T:], 0.0) and all(rows[T + q] == {0: 1.0} for q in range(T))
    assert data["note"].startswith("each query row's 3 largest weights of 40 kept")
    thumbs = np.frombuffer(base64.b64decode(data["thumb"]["data"]), np.uint8).reshape(2, T, T)
    assert (thumbs[1, :, 0] == 255).all() and (thumbs[1, :, 1:] == 0).all()
    assert (thumbs[0].max(axis=1) == 255).all()  # each row scaled to its strongest cell


def test_viewer_thumbnails_pool_long_maps_and_scores_join_the_stats():
    T = 200
    maps = torch.zeros(1, 2, T, T)
    maps[0, :, torch.arange(T), torch.arange(T)] = 1.0  # a diagonal (self) head
    views = views_from_maps({"blocks.0.attn.pattern": maps}, ["x"] * T)
    data = page_data(viewer_html(views, scores={"induction": {"blocks.0.attn": [0.25, 0.75]}}))[0]
    assert (data["thumb"]["rows"], data["thumb"]["cols"]) == (64, 64)
    thumbs = np.frombuffer(base64.b64decode(data["thumb"]["data"]), np.uint8).reshape(2, 64, 64)
    assert (np.diag(thumbs[0]) == 255).all() and thumbs[0].sum() < 64 * 255 * 2.1  # a pooled diagonal
    assert data["layers"][0]["stats"]["induction"] == [0.25, 0.75]
    assert data["layers"][0]["stats"]["distance"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="2 heads"):
        viewer_html(views, scores={"induction": {"blocks.0.attn": [0.5]}})


def test_viewer_displays_inline_in_a_notebook():
    views = views_from_maps({"blocks.0.attn.pattern": fake_maps(3, 3)}, ["<script>alert(1)</script>", "a", "b"])
    viewer = AttentionViewer(views, title='"quoted" <title>')
    shown = viewer._repr_html_()
    assert shown.startswith('<iframe srcdoc="') and shown.count("<") == 2  # the iframe's own tags only
    srcdoc = re.search(r'srcdoc="([^"]*)"', shown).group(1)
    assert html.unescape(srcdoc) == viewer.html()


def test_attention_top_k_must_be_positive():
    assert SampleConfig(attention_top_k=3).attention_top_k == 3
    with pytest.raises(ConfigError, match="attention_top_k must be a positive integer"):
        SampleConfig(attention_top_k=0)


def test_long_prompt_page_stays_small_and_loads_in_chromium(tmp_path):
    # GPT-2 small's 12 heads on a 1,024-token prompt (2 of its 12 layers: the page grows by layer x head)
    T, n_layer, n_head = 1024, 2, 12
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = [(torch.randn(1, n_head, T, T) * 0.3).masked_fill(~causal, -1e9) for _ in range(n_layer)]
    maps = {f"blocks.{i}.attn.pattern": torch.softmax(s, -1) for i, s in enumerate(scores)}
    page = viewer_html(views_from_maps(maps, [f"<t{i}>" for i in range(T)]))
    # the bound stated in docs/viewer.md: 55 KB per head at 1,024 tokens (7.9 MB for 12 x 12), plus the tokens
    assert len(page) < n_layer * n_head * 55_000 + 60_000, len(page)
    seen = load_in_browser(page, tmp_path)
    assert "error" not in seen and seen["errors"] == "", seen
    assert seen["status"] == "ready" and seen["gridCells"] == [n_layer * n_head] and seen["blankThumbs"] == 0
    assert seen["queries"] == [f"<t{i}>" for i in range(T)] and seen["headsOn"] == ["1"]
    drawn = [int(n) for n in seen["drawnTwo"].split(",")]
    assert drawn[0] > 0 and drawn[1] > 0 and sum(drawn[2:]) == 0
    assert seen["matrix"][:2] == [T, T]
    assert seen["note"].startswith("each query row's 8 largest weights of 1024 kept")


def test_sample_writes_maps_for_prompt_and_generated_tokens(tmp_path):
    chars = "".join(sorted(set("<img src=x onerror=alert(1)></script>abcdefgh\n")))
    tokenizer = CharTokenizer(chars)
    config = GPTConfig(n_layer=2, n_head=3, n_embd=24, block_size=32, vocab_size=tokenizer.vocab_size)
    model = GPT(config)
    out = tmp_path / "out"
    save_checkpoint({"model": model.state_dict(), "model_type": "gpt", "model_args": to_dict(config),
                     "tokenizer": tokenizer.meta()}, str(out / "ckpt.pt"))
    prompt = "<img src=x onerror=alert(1)></script>"
    attn = tmp_path / "attn"
    proc = run_script("sample.py", f"--out_dir={out}", f"--start={prompt}", "--num_samples=2", "--max_new_tokens=6",
                      "--top_k=1", f"--attention_dir={attn}", "--ablate=1.2,0.0", "--ablate_mode=mean")
    assert "blocks.1.attn.2" in proc.stdout and "entropy" in proc.stdout
    saved = np.load(attn / "attention.npz")
    # the prompt (37 tokens) is cropped to the context window (32), which then fills and restarts the cache
    first = len(prompt) - 32
    N = len(prompt) + 6 - 1 - first  # the last generated token is never fed back
    assert saved["blocks.0.attn"].shape == (3, N, N)
    assert np.allclose(saved["blocks.0.attn"].sum(-1), 1.0, atol=1e-4)
    tokens = list(saved["view0.query_tokens"])
    assert "".join(tokens[:len(prompt) - first]) == prompt[first:]
    assert (attn / "blocks.1.attn.png").exists()
    seen = load_in_browser((attn / "attention.html").read_text(encoding="utf-8"), tmp_path)
    assert seen["status"] == "ready" and seen["errors"] == "" and seen["images"] == 0
    assert seen["gridCells"] == [6] and seen["queries"] == [display_token(t) for t in tokens]
    assert page_data((attn / "attention.html").read_text(encoding="utf-8"))[0]["prompt_length"] == len(prompt) - first


def test_log_attention_prints_stats_and_logs_images(monkeypatch, capsys):
    import wandb
    from training.logger import log_attention

    logged = []
    monkeypatch.setattr(wandb, "log", lambda record, step: logged.append((record, step)))
    tokenizer = CharTokenizer("abcdefgh")
    model = GPT(GPTConfig(n_layer=2, n_head=3, n_embd=24, block_size=8, vocab_size=8)).train()
    batch = {"idx": torch.randint(0, 8, (4, 8)), "targets": torch.randint(0, 8, (4, 8))}
    log_attention(model, batch, tokenizer, step=7, wandb_log=True)
    assert model.training  # put back as it was
    assert "blocks.1.attn.2" in capsys.readouterr().out
    (record, step), = logged
    assert step == 7
    assert 0 < record["attn/blocks.0.attn.1/entropy"] <= np.log(8) and 0 < record["attn/blocks.1.attn.2/max"] <= 1
    assert isinstance(record["attn/blocks.1.attn/pattern"], wandb.Image)
    assert model.hook_names() and all(not p._forward_hooks for p in model.hook_points().values())


def test_pages_and_maps_are_written_atomically(tmp_path, monkeypatch):
    import lens.heatmaps as heatmaps

    views = views_from_maps({"blocks.0.attn.pattern": fake_maps(3, 3)}, list("abc"))
    folder = tmp_path / "attn"
    write_attention(str(folder), views, png=False)
    before = {name: (folder / name).read_bytes() for name in ("attention.html", "attention.npz")}

    def fails(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(heatmaps, "viewer_html", fails)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_attention(str(folder), views, png=False)
    monkeypatch.undo()

    def half_written(file, **arrays):
        file.write(b"PK\x03\x04 half")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(heatmaps.np, "savez_compressed", half_written)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_attention(str(folder), views, png=False)
    monkeypatch.undo()
    viewer = AttentionViewer(views)
    monkeypatch.setattr(viewer, "html", lambda: fails())
    with pytest.raises(RuntimeError, match="interrupted"):
        viewer.save(str(folder / "attention.html"))
    assert {name: (folder / name).read_bytes() for name in before} == before  # the old files, whole
    assert sorted(os.listdir(folder)) == ["attention.html", "attention.npz"]  # no temporary file left


DEFECT_PROBE = """<pre id="probe"></pre><script>
const out = {};
try {
  const $$ = (sel) => [...document.querySelectorAll(sel)];
  const stat = document.getElementById("stat");
  stat.value = "myscore"; stat.dispatchEvent(new Event("change"));
  out.cellTitle = document.querySelector(".cell[data-layer='0'][data-head='2']").title;
  document.querySelector(".cell[data-layer='0'][data-head='0']").dispatchEvent(new MouseEvent("click", {bubbles: true}));
  out.linesHint = document.getElementById("info").textContent;
  document.querySelector("#heads button[data-head='all']").dispatchEvent(new MouseEvent("click", {bubbles: true}));
  document.querySelectorAll("#queries .tok")[3].dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
  const info = document.getElementById("info");
  out.infoFits = info.scrollWidth <= info.clientWidth + 1 && info.getBoundingClientRect().right <= window.innerWidth;
  out.infoText = info.textContent;
  out.gen = $$("#queries .tok").map((s, i) => s.classList.contains("gen") ? i : -1).filter((i) => i >= 0);
  out.firstGen = $$("#keys .tok.first-gen").map((s) => Number(s.dataset.index));
  out.note = document.getElementById("note").textContent;
  const matrix = document.querySelector("input[value=matrix]");
  matrix.checked = true; matrix.dispatchEvent(new Event("change"));
  out.matrixHint = info.textContent;
  out.queryLabels = $$("#mqueries .mlabel").map((s) => s.textContent);
  out.keyLabels = $$("#mkeys .mlabel").map((s) => s.textContent);
  out.genLabels = $$("#mqueries .mlabel.gen").length;
  const bar = document.getElementById("mscalebar"), px = bar.getContext("2d").getImageData(0, 0, bar.width, 1).data;
  out.scale = [bar.width, px[0], px[4 * (bar.width - 1)]];  // red channel: white (255) at 0, blue (0) at 1
  out.boxShown = getComputedStyle(document.getElementById("matrixbox")).display;
} catch (e) { out.error = String(e) + " " + e.stack; }
out.errors = document.getElementById("errors").textContent;
document.getElementById("probe").textContent = JSON.stringify(out);
</script></body>"""


def test_viewer_defects_seen_on_real_models_are_fixed(tmp_path):
    """Custom scores name themselves in the tooltip; the matrix view has token labels, a colour scale and its own
    hint; the info line of 12 heads wraps inside the page; a GPT's page marks where the prompt ends."""
    tokens = [f"tok{i}" for i in range(10)]
    maps = {f"blocks.{layer}.attn.pattern": torch.softmax(torch.randn(1, 12, 10, 10), -1).tril() for layer in range(2)}
    maps = {k: v / v.sum(-1, keepdim=True) for k, v in maps.items()}
    views = views_from_maps(maps, tokens, prompt_length=6)
    scores = {"myscore": {f"blocks.{layer}.attn": [h / 10 for h in range(12)] for layer in range(2)}}
    page = viewer_html(views, title="gpt", scores=scores)
    assert page_data(page)[0]["prompt_length"] == 6
    seen = load_in_browser(page, tmp_path, probe=DEFECT_PROBE)
    assert "error" not in seen and seen["errors"] == "", seen
    assert seen["cellTitle"] == "blocks.0.attn head 2, myscore 0.2"
    assert seen["linesHint"] == "hover a token to see where it attends"
    assert seen["infoFits"] and "head 3" in seen["infoText"], seen["infoText"]
    assert seen["gen"] == [6, 7, 8, 9] and seen["firstGen"] == [6] and "tokens 0..5" in seen["note"]
    assert seen["matrixHint"] == "hover a cell to see its query, key and weight"
    assert seen["queryLabels"] == tokens and seen["keyLabels"] == tokens and seen["genLabels"] == 4
    assert seen["scale"] == [100, 255, 0] and seen["boxShown"] == "grid"
