"""What the attention viewer costs on long prompts: page size, build time, and load/interaction times in Chromium.

    python benchmarks/viewer.py                              # GPT-2 small's shape, random weights: 64 and 1,024 tokens
    python benchmarks/viewer.py --tokens=256,1024 --repeats=5 --top_k=16

The model is a GPT with GPT-2 small's sizes (12 layers x 12 heads, 768 wide, 50,257 tokens) and random
weights; the prompt is random token ids. Its maps go through the same path as `sample.py
--attention_dir` (views_from_maps, write_attention without PNGs). The page is then opened in headless
Chromium with a probe appended that times, in the page's own clock (performance.now()): loading to
ready (from navigation start: read, parse, decode, the model view drawn), opening a head from the
grid, hovering a token, overlaying all 12 heads and drawing the matrix. Medians of --repeats loads.
"""

import argparse
import html
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lens.heatmaps import views_from_maps, write_attention  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

PROBE = """<pre id="probe"></pre><script>
const out = { ready: performance.now(), status: document.body.getAttribute("data-status") };
try {
const click = (node) => node.dispatchEvent(new MouseEvent("click", {bubbles: true}));
const timed = (fn) => { const t = performance.now(); fn(); return performance.now() - t; };
out.open = timed(() => click(document.querySelector(".cell[data-layer='5'][data-head='3']")));
out.hover = timed(() => document.querySelectorAll("#queries .tok")[500 % VIEWS[0].queries.length]
  .dispatchEvent(new MouseEvent("mouseover", {bubbles: true})));
document.getElementById("lines").dispatchEvent(new MouseEvent("mouseleave"));
out.allHeads = timed(() => click(document.querySelector("#heads button[data-head=all]")));
const matrix = document.querySelector("input[value=matrix]");
matrix.checked = true;
out.matrix = timed(() => matrix.dispatchEvent(new Event("change")));
} catch (e) { out.error = String(e); }
out.errors = document.getElementById("errors").textContent + (out.error || "");
document.getElementById("probe").textContent = JSON.stringify(out);
</script></body>"""


def chromium_probe(page_path: str, check: bool = True) -> tuple[dict, float]:
    """Load the page with the probe in headless Chromium; return the probe's timings (ms) and the wall time (s)."""
    probe_path = page_path.replace(".html", ".probe.html")
    with open(page_path, encoding="utf-8") as f:
        page = f.read()
    with open(probe_path, "w", encoding="utf-8") as f:
        f.write(page.replace("</body>", PROBE))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", Path(probe_path).resolve().as_uri()],
            capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    if not found:
        sys.exit(f"error: Chromium returned no probe output ({proc.stderr.strip()[-300:]}); is chromium installed?")
    seen = json.loads(html.unescape(found.group(1)))
    if check and (seen["status"] != "ready" or seen["errors"]):
        sys.exit(f"error: the page did not load cleanly: {seen}")
    return seen, wall


def build(tokens: int, out_dir: str, top_k: int) -> dict:
    """Run GPT-2 small's shape on a random prompt; write its viewer; return sizes and times."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (1, tokens))
    start = time.perf_counter()
    with torch.no_grad():
        _, cache = model.run_with_cache(idx, names_filter="*.attn.pattern", device="cpu")
    forward = time.perf_counter() - start
    start = time.perf_counter()
    views = views_from_maps(cache, [f"tok{i}" for i in range(tokens)])
    write_attention(out_dir, views, title=f"{tokens} tokens", png=False, top_k=top_k)
    written = time.perf_counter() - start
    weights = sum(m.size for view in views for m in view.layers.values())
    return {"forward": forward, "written": written, "dense_b64": 4 * ((weights + 2) // 3),
            "html": os.path.getsize(os.path.join(out_dir, "attention.html")),
            "npz": os.path.getsize(os.path.join(out_dir, "attention.npz"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="64,1024", help="comma-separated prompt lengths, at most 1024")
    parser.add_argument("--repeats", type=int, default=3, help="Chromium loads per length (median reported)")
    parser.add_argument("--top_k", type=int, default=8, help="weights kept per query row on long pages")
    parser.add_argument("--out", default="bench-viewer", help="folder for the pages (made if missing)")
    args = parser.parse_args()
    try:
        lengths = [int(n) for n in args.tokens.split(",")]
    except ValueError:
        sys.exit(f"error: --tokens must be comma-separated integers, got {args.tokens!r}.")
    if not all(1 <= n <= 1024 for n in lengths) or args.repeats < 1 or args.top_k < 1:
        sys.exit("error: each --tokens length must be 1 to 1024, --repeats and --top_k at least 1.")
    blank = os.path.join(args.out, "blank.html")  # Chromium's own start and exit, for the wall-time column
    os.makedirs(args.out, exist_ok=True)
    with open(blank, "w", encoding="utf-8") as f:
        f.write('<body data-status="ready"><pre id="errors"></pre><div class="cell"></div></body>')
    base = statistics.median(chromium_probe(blank, check=False)[1] for _ in range(args.repeats))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; GPT-2 small shape (12 x 12), random weights; "
          f"median of {args.repeats} Chromium loads")
    print(f"Chromium wall s: the whole run of `chromium --headless --dump-dom` (a blank page takes {base:.1f} s)\n")
    print("| tokens | old page (1 byte/weight, est.) | HTML | npz | forward s | write s | Chromium wall s | "
          "ready ms | open head ms | hover ms | 12 heads overlaid ms | matrix ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tokens in lengths:
        out_dir = os.path.join(args.out, f"t{tokens}")
        sizes = build(tokens, out_dir, args.top_k)
        runs = [chromium_probe(os.path.join(out_dir, "attention.html")) for _ in range(args.repeats)]
        med = {key: statistics.median(seen[key] for seen, _ in runs)
               for key in ("ready", "open", "hover", "allHeads", "matrix")}
        wall = statistics.median(w for _, w in runs)
        print(f"| {tokens} | {sizes['dense_b64'] / 1e6:.1f} MB | {sizes['html'] / 1e6:.2f} MB | "
              f"{sizes['npz'] / 1e6:.1f} MB | {sizes['forward']:.1f} | {sizes['written']:.1f} | {wall:.1f} | "
              f"{med['ready']:.0f} | {med['open']:.0f} | {med['hover']:.0f} | {med['allHeads']:.0f} | "
              f"{med['matrix']:.0f} |")


if __name__ == "__main__":
    main()
