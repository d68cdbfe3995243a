"""Heatmaps, npz, and the HTML viewer loaded in a real headless browser (Debian's chromium)."""

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
from model import GPT, GPTConfig, save_checkpoint
from training.config import to_dict
from lens.heatmaps import display_token, views_from_maps, viewer_html, write_attention

HOSTILE = ["<img src=x onerror=alert(1)>", "</script><script>document.title='pwned'</script>", "<!--", "a&amp;b",
           " \n", "\u2028", '"', ""]

PROBE = """<pre id="probe"></pre><script>
const out = {};
try {
  const text = (sel) => [...document.querySelectorAll(sel)].map((s) => s.textContent);
  out.status = document.body.getAttribute("data-status");
  out.titles = VIEWS.map((v) => v.title);
  out.queries = text("#queries .tok");
  document.querySelectorAll("#queries .tok")[2].dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
  out.info = document.getElementById("info").textContent;
  out.lit = [...document.querySelectorAll("#keys .tok")].filter((s) => s.style.background).length;
  const matrix = document.querySelector("input[value=matrix]");
  matrix.checked = true;
  matrix.dispatchEvent(new Event("change"));
  out.matrix = [document.getElementById("matrix").width, document.getElementById("matrix").height];
  const view = document.getElementById("view");
  view.value = String(VIEWS.length - 1);
  view.dispatchEvent(new Event("change"));
  const head = document.getElementById("head");
  head.value = "-1";
  head.dispatchEvent(new Event("change"));
  out.lastQueries = text("#queries .tok");
  out.lastKeys = text("#keys .tok");
  out.images = document.querySelectorAll("img").length;
  out.scripts = document.querySelectorAll("script").length;
  out.docTitle = document.title;
} catch (e) { out.error = String(e); }
out.errors = document.getElementById("errors").textContent;
document.getElementById("probe").textContent = JSON.stringify(out);
</script></body>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("the viewer test needs a headless browser: install Debian's chromium (apt-get install -y chromium).")


def load_in_browser(page: str, tmp_path) -> dict:
    """Open the page (with the probe script appended) in headless chromium; return what the probe saw."""
    path = tmp_path / "probe.html"
    assert page.count("</body>") == 1
    path.write_text(page.replace("</body>", PROBE), encoding="utf-8")
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


def test_viewer_loads_in_chromium_and_escapes_tokens(tmp_path):
    source = ["src", *HOSTILE]
    T, S = len(HOSTILE), len(source)
    maps = {"encoder.blocks.0.attn.pattern": fake_maps(S, S), "decoder.blocks.0.attn.pattern": fake_maps(T, T),
            "decoder.blocks.0.cross_attn.pattern": fake_maps(T, S)}
    page = viewer_html(views_from_maps(maps, HOSTILE, source), title="<b>title</b>")
    assert "<img" not in page and page.count("</script>") == 2  # the viewer's two script elements only
    seen = load_in_browser(page, tmp_path)
    assert "error" not in seen and seen["errors"] == "", seen
    assert seen["status"] == "ready"
    assert seen["titles"] == ["encoder self-attention", "decoder self-attention", "decoder cross-attention"]
    assert seen["queries"] == [display_token(t) for t in source]  # the first view: the encoder's tokens
    assert seen["info"].startswith("query 2 ") and seen["lit"] > 0  # hovering a token lights up its keys
    assert seen["matrix"] == [16 * S, 16 * S]
    assert seen["lastQueries"] == [display_token(t) for t in HOSTILE]
    assert seen["lastKeys"] == [display_token(t) for t in source]
    assert seen["images"] == 0 and seen["scripts"] == 3  # nothing injected (the third is the probe)
    assert seen["docTitle"] == "<b>title</b>"


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
    assert seen["queries"] == [display_token(t) for t in tokens]


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
