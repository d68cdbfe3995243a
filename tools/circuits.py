"""Which components make a GPT predict its next token, and what kind of head is each? One command.

    python tools/circuits.py --out_dir=out-induction --prompt="ROMEO: ... ROMEO"
    python tools/circuits.py --init_from=gpt2 --prompt="When Mary and John went to the store, John gave a drink to" \
        --target=" Mary" --wrong=" John" --corrupt="When Mary and John went to the store, Mary gave a drink to"

Prints the direct logit attribution of every head and MLP (top k), each head's detector scores and the
logit lens, then patches the clean prompt into the corrupted one (exact and attribution patching).
Writes PNGs, circuits.html (tables and charts, offline) and attention.html (the attention viewer) into --report.
The metric is logit(target) - logit(wrong) at the last position (logit(target) without --wrong);
target defaults to the model's prediction. Without --corrupt the corrupted prompt is the clean one's
tokens in a fixed random order.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.tokenizer import GPT2Tokenizer, TokenizerError, from_meta  # noqa: E402
from lens import detectors, patching, report  # noqa: E402
from lens.logit_lens import logit_lens, top_tokens  # noqa: E402
from model import GPT, CheckpointError, ConfigError, load_checkpoint  # noqa: E402
from training.families import model_from_checkpoint  # noqa: E402
from lens.heatmaps import views_from_maps, write_attention  # noqa: E402
from weights.common import atomic_write  # noqa: E402


def load(args):
    """(model in eval mode, tokenizer) from --out_dir's checkpoint or --init_from."""
    if args.init_from:
        model, tokenizer = GPT.from_pretrained(args.init_from), GPT2Tokenizer()
    else:
        ckpt = load_checkpoint(args.out_dir)
        if ckpt.get("model_type", "gpt") != "gpt":
            raise ConfigError(f"{args.out_dir} holds a {ckpt['model_type']} model; this tool explains a GPT's "
                              "next-token prediction (use lens/ in Python for the other families).")
        model, tokenizer = model_from_checkpoint(ckpt), from_meta(ckpt["tokenizer"])
    return model.to(args.device).eval(), tokenizer


def single_token(tokenizer, text: str, what: str) -> int:
    """The id of a text that is exactly one token."""
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        raise ConfigError(f"--{what} {text!r} is {len(ids)} tokens; give text that is exactly one token.")
    return ids[0]


def encode_prompt(model, tokenizer, text: str, what: str) -> torch.Tensor:
    """(1, T) ids of a prompt, checked against the context length."""
    ids = tokenizer.encode(text)
    if not 2 <= len(ids) <= model.config.block_size:
        raise ConfigError(f"--{what} is {len(ids)} tokens; give 2 to {model.config.block_size} tokens.")
    return torch.tensor([ids], device=next(model.parameters()).device)


def print_table(header: list[str], rows: list[list]) -> None:
    """A plain-text table, floats with 3 decimals."""
    text = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    for row in text:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def attribution(cache, target: int, wrong: int | None, k: int):
    """(labels, values): every head's and MLP's direct effect on the metric at the last position."""
    parts, labels = cache.get_full_resid_decomposition(pos_slice=-1, expand_neurons=False, return_labels=True)
    values = cache.logit_attrs(parts, torch.tensor([target]), None if wrong is None else torch.tensor([wrong]),
                               pos_slice=-1)[:, 0].cpu().numpy()
    print(f"\ndirect logit attribution (top {k} by size; they sum to the metric minus the final norm's bias term):")
    order = np.argsort(-np.abs(values))[:k]
    print_table(["component", "attribution"], [[labels[i], float(values[i])] for i in order])
    return labels, values


def head_detectors(model, ids: torch.Tensor) -> tuple[list[str], list[list]]:
    """Each head's previous-token, duplicate-token, induction and sink scores, printed and returned."""
    scores = {"previous": detectors.detect_head(model, ids, "previous_token_head"),
              "duplicate": detectors.detect_head(model, ids, "duplicate_token_head"),
              "induction": detectors.induction_scores(model, min(20, model.config.block_size // 2)),
              "sink": detectors.attention_sink_scores(model, ids)}
    header = ["head", *scores]
    n_layer, n_head = scores["sink"].shape
    rows = [[f"L{l}H{h}", *(float(s[l, h]) for s in scores.values())] for l in range(n_layer) for h in range(n_head)]
    print("\nhead detectors (share of attention; induction on repeated random tokens, sink = weight on position 0):")
    print_table(header, rows)
    return header, rows


def lens_table(cache, tokens: list[str], tokenizer, n_cols: int = 12):
    """The logit lens's top token at the last n_cols positions, printed; the figure returned."""
    ids, probs = top_tokens(logit_lens(cache)[:, 0], k=1)  # (n_layer + 1, T, 1)
    labels = cache.accumulated_resid(return_labels=True)[1]
    cols = list(range(max(0, len(tokens) - n_cols), len(tokens)))
    top = [[tokenizer.decode([int(ids[r, c, 0])]) for c in cols] for r in range(len(labels))]
    print("\nlogit lens (top token read from the stream before each block; last row = the model's output):")
    print_table(["stream", *[repr(tokens[c])[:10] for c in cols]], [[labels[r], *map(repr, top[r])] for r in range(len(labels))])
    return report.logit_lens_figure(top, probs[:, cols, 0].cpu().numpy(), labels, [tokens[c] for c in cols])


def patch_all(model, ids, corrupted, cache, metric):
    """Exact and attribution patching of resid_pre (layer, pos) and head outputs (layer, head)."""
    tables = {}
    for kind in ("resid_pre", "attn_head_out_all_pos"):
        tables[kind] = patching.patch_table(model, corrupted, cache, metric, kind, progress=True)
    approx = patching.attribution_patch(model, corrupted, cache, metric, list(tables))
    with torch.no_grad():
        base = float(metric(model(corrupted)[0]))
    for kind, table in tables.items():
        both = torch.stack([(table - base).flatten(), approx[kind].flatten()])
        print(f"{kind}: attribution vs exact patching, correlation {torch.corrcoef(both)[0, 1].item():.3f}")
    return tables, approx, base


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Explain a GPT's next-token prediction: attribution, detectors, "
                                                 "logit lens, patching.")
    parser.add_argument("--out_dir", default="out", help="folder with a headscope checkpoint (ckpt.pt)")
    parser.add_argument("--init_from", default="", help="gpt2 (or gpt2-medium, ...) or a Hugging Face GPT-2 folder")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--target", default=None, help="the token to explain (default: the model's prediction)")
    parser.add_argument("--wrong", default=None, help="a contrast token: explain logit(target) - logit(wrong)")
    parser.add_argument("--corrupt", default=None, help="corrupted prompt for patching (same token count)")
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--report", default="circuits-report", help="folder for PNGs and HTML")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model, tokenizer = load(args)
    ids = encode_prompt(model, tokenizer, args.prompt, "prompt")
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    with torch.no_grad():
        (logits, _), cache = model.run_with_cache(ids)
    predicted = int(logits[0, -1].argmax())
    target = predicted if args.target is None else single_token(tokenizer, args.target, "target")
    wrong = None if args.wrong is None else single_token(tokenizer, args.wrong, "wrong")
    print(f"prompt: {len(tokens)} tokens; predicted next token {tokenizer.decode([predicted])!r}; "
          f"explaining {tokenizer.decode([target])!r}" + ("" if wrong is None else f" minus {tokenizer.decode([wrong])!r}"))
    labels, values = attribution(cache, target, wrong, args.top_k)
    det_header, det_rows = head_detectors(model, ids)
    lens_fig = lens_table(cache, tokens, tokenizer)
    if args.corrupt is None:
        order = torch.randperm(ids.size(1), generator=torch.Generator().manual_seed(0))
        corrupted = ids[:, order.to(ids.device)]
    else:
        corrupted = encode_prompt(model, tokenizer, args.corrupt, "corrupt")
    metric = lambda lg: lg[0, -1, target] - (lg[0, -1, wrong] if wrong is not None else 0.0)  # noqa: E731
    print(f"\npatching the clean prompt into the corrupted one (clean metric {float(metric(logits)):.3f}):")
    tables, approx, base = patch_all(model, ids, corrupted, cache, metric)
    write_report(args.report, model, cache, tokens, labels, values, det_header, det_rows, lens_fig, tables, approx, base)


def write_report(folder, model, cache, tokens, labels, values, det_header, det_rows, lens_fig, tables, approx, base):
    """PNGs, circuits.html and the attention viewer into `folder`."""
    os.makedirs(folder, exist_ok=True)
    heads = [f"H{h}" for h in range(model.config.n_head)]
    figures = {"logit_lens": lens_fig, "attribution": report.attribution_figure(labels, values),
               "patch_resid_pre": report.patching_figure(tables["resid_pre"].numpy() - base, tokens, "layer",
                                                         "position", "exact patching: resid_pre (metric - corrupted)"),
               "patch_heads": report.patching_figure(tables["attn_head_out_all_pos"].numpy() - base, heads, "layer",
                                                     "head", "exact patching: head outputs (metric - corrupted)"),
               "attr_patch_resid_pre": report.patching_figure(approx["resid_pre"].numpy(), tokens, "layer",
                                                              "position", "attribution patching: resid_pre"),
               "attr_patch_heads": report.patching_figure(approx["attn_head_out_all_pos"].numpy(), heads, "layer",
                                                          "head", "attribution patching: head outputs")}
    sections = [("head detectors", report.html_table(det_header, det_rows))]
    for name, fig in figures.items():
        with atomic_write(os.path.join(folder, f"{name}.png")) as f:
            fig.savefig(f, format="png", dpi=100)
        sections.append((name.replace("_", " "), report.png_img(fig, name)))
    page = report_page(sections, tokens)
    with atomic_write(os.path.join(folder, "circuits.html"), "w") as f:
        f.write(page)
    maps = {k: v.cpu() for k, v in cache.items() if k.endswith(".pattern")}
    write_attention(folder, views_from_maps(maps, tokens), png=False)
    print(f"\nwrote {folder}/circuits.html, {folder}/attention.html and {len(figures)} PNGs")


def report_page(sections, tokens) -> str:
    """The whole page: the prompt's tokens, then every section."""
    prompt = report.html_table(["position", "token"], [[i, t] for i, t in enumerate(tokens)])
    return report.report_html("circuits", [("prompt", prompt), *sections])


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, CheckpointError, TokenizerError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
