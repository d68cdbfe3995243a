"""Which components make a GPT predict its next token, and what kind of head is each? One command.

    python tools/circuits.py --out_dir=out-induction --prompt="ROMEO: ... ROMEO"
    python tools/circuits.py --init_from=gpt2 --prompt="When Mary and John went to the store, John gave a drink to" \
        --target=" Mary" --wrong=" John" --corrupt="When Mary and John went to the store, Mary gave a drink to"
    python tools/circuits.py --init_from=path/to/bert --prompt="The cat sat on the mat." \
        --corrupt="The dog sat on the mat."      # an encoder: detectors, attention statistics, patching

--init_from takes any folder of weights/hf_families.py's table (or a Hub id); the model's own tokenizer
encodes the prompts (--tokenizer= when the folder has none).
For an encoder (BERT, RoBERTa, with or without the MLM head) it prints each head's detector scores
(previous, duplicate, induction, first-position and [SEP] sinks) and attention statistics, then patches the
clean sentence into the corrupted one against a metric of the hidden states: the cosine similarity of
the run's mean-pooled final hidden states with the clean run's. A post-norm encoder normalises the
residual sum in every block, so it has no direct attribution or logit lens (they are left out, with a note).

Prints the direct logit attribution of every head and MLP (top k), each head's detector scores and the
logit lens, then patches the clean prompt into the corrupted one (exact and attribution patching).
Writes PNGs, circuits.html (tables and charts, offline) and attention.html (the attention viewer) into --report.
The metric is logit(target) - logit(wrong) at the last position (logit(target) without --wrong);
target defaults to the model's prediction. Without --corrupt the corrupted prompt is the clean one's
tokens in a fixed random order.

BOS is a choice: --prepend_bos=True puts the tokenizer's BOS token (GPT-2's <|endoftext|>, as
TransformerLens does by default) before the prompt and the corrupted prompt of a decoder; the default,
False, reads the prompt as written, so the detectors' "sink" (weight on position 0) is then the weight on
its first word. A character tokenizer has no BOS token. With more than 24 heads the detectors print the top
5 heads of each score; head_detectors.png has every head (layer x head).
"""

import argparse
import os
import sys
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.tokenizer import from_meta  # noqa: E402
from lens import detectors, patching, report  # noqa: E402
from lens.circuit import faithfulness_curve, greedy_circuit  # noqa: E402
from lens.circuit_plots import circuit_figure, faithfulness_figure, top_edges_rows  # noqa: E402
from lens.eap import eap_ig  # noqa: E402
from lens.edges import Pairs  # noqa: E402
from lens.logit_lens import logit_lens, top_tokens  # noqa: E402
from lens.tl_methods import bos_token  # noqa: E402
from lens.recorder import head_stats_all, stats_table  # noqa: E402
from model import load_checkpoint  # noqa: E402
from training.families import load_pretrained, model_from_checkpoint, pretrained_tokenizer  # noqa: E402
from lens.heatmaps import views_from_maps, write_attention  # noqa: E402
from weights.common import ConfigError, UserError, atomic_write  # noqa: E402

FAMILIES = ("gpt", "bert")  # what this tool explains: a decoder's next token, an encoder's sentence


def load(args):
    """(model in eval mode, tokenizer) from --out_dir's checkpoint or --init_from (its own tokenizer or --tokenizer)."""
    if args.init_from:
        model = load_pretrained(args.init_from)
        tokenizer = pretrained_tokenizer(model, args.init_from, args.tokenizer)
    else:
        if args.tokenizer:
            raise ConfigError("--tokenizer is for --init_from=<folder>; a checkpoint of ours holds its tokenizer.")
        ckpt = load_checkpoint(args.out_dir)
        if ckpt.get("model_type", "gpt") not in FAMILIES:
            raise ConfigError(f"{args.out_dir} holds a {ckpt['model_type']} model; this tool explains a GPT or a BERT "
                              "(use lens/ in Python for the encoder-decoders).")
        model, tokenizer = model_from_checkpoint(ckpt), from_meta(ckpt["tokenizer"])
    return model.to(args.device).eval(), tokenizer


def single_token(tokenizer, text: str, what: str) -> int:
    """The id of a text that is exactly one token."""
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        raise ConfigError(f"--{what} {text!r} is {len(ids)} tokens; give text that is exactly one token.")
    return ids[0]


def encode_prompt(model, tokenizer, text: str, what: str, prepend_bos: bool = False) -> torch.Tensor:
    """(1, T) ids of a prompt, checked against the context length; an encoder's framed as [CLS] text [SEP],
    a decoder's after the BOS token with prepend_bos."""
    ids = tokenizer.encode(text)
    if prepend_bos:
        if model.model_type == "bert" or bos_token(tokenizer) is None:
            raise ConfigError("--prepend_bos=True, but this tokenizer has no BOS token (a character tokenizer) or the "
                              "model is an encoder (framed by [CLS] ... [SEP]); leave it out.")
        ids = [bos_token(tokenizer)] + ids
    if model.model_type == "bert":
        ids = [tokenizer.special_ids[s] for s in ("[CLS]",) if s in tokenizer.special_ids] + ids \
            + [tokenizer.special_ids[s] for s in ("[SEP]",) if s in tokenizer.special_ids]
    if not 2 <= len(ids) <= model.config.block_size:
        raise ConfigError(f"--{what} is {len(ids)} tokens; give 2 to {model.config.block_size} tokens.")
    return torch.tensor([ids], device=next(model.parameters()).device)


def parse_bool(value: str) -> bool:
    """True or False, as the other scripts' --key=value options."""
    if value not in ("True", "False"):
        raise ValueError(value)
    return value == "True"


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


def head_detectors(model, ids: torch.Tensor, sep_id: int | None = None) -> tuple[list[str], list[list], dict]:
    """Each head's previous-token, duplicate-token, induction and sink scores (and [SEP] sink): printed (past 24
    heads the top 5 of each) and returned with the score tables."""
    scores = {"previous": detectors.detect_head(model, ids, "previous_token_head"),
              "duplicate": detectors.detect_head(model, ids, "duplicate_token_head"),
              "induction": detectors.induction_scores(model, min(20, model.config.block_size // 2)),
              "sink": detectors.attention_sink_scores(model, ids)}
    if sep_id is not None and bool((ids == sep_id).any()):
        scores["sep_sink"] = detectors.separator_sink_scores(model, ids, sep_id)
    header = ["head", *scores]
    n_layer, n_head = scores["sink"].shape
    rows = [[f"L{l}H{h}", *(float(s[l, h]) for s in scores.values())] for l in range(n_layer) for h in range(n_head)]
    print("\nhead detectors (share of attention; induction on repeated random tokens, sink = weight on position 0, "
          "sep_sink = on [SEP]):")
    if len(rows) <= 24:
        print_table(header, rows)
    else:
        top = [[name, *(f"L{i // n_head}H{i % n_head} {s.flatten()[i]:.2f}" for i in s.flatten().argsort(descending=True)[:5])]
               for name, s in scores.items()]
        print_table(["detector", *(f"top {k + 1}" for k in range(5))], top)
        print("(every head: head_detectors.png in the report)")
    return header, rows, {name: s.cpu().numpy() for name, s in scores.items()}


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


def parse(argv: list[str]):
    """The command line."""
    parser = argparse.ArgumentParser(description="Explain a GPT's next-token prediction (attribution, detectors, "
                                                 "logit lens, patching) or an encoder's sentence (detectors, patching).")
    parser.add_argument("--out_dir", default="out", help="folder with a headscope checkpoint (ckpt.pt)")
    parser.add_argument("--init_from", default="", help="gpt2 (or gpt2-medium, ...), a Hugging Face folder or Hub id")
    parser.add_argument("--tokenizer", default="", help="for a folder without tokenizer files: gpt2 or a folder with them")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--target", default=None, help="the token to explain (default: the model's prediction)")
    parser.add_argument("--wrong", default=None, help="a contrast token: explain logit(target) - logit(wrong)")
    parser.add_argument("--corrupt", default=None, help="corrupted prompt for patching (same token count)")
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--edges", type=int, default=20, help="edges in the EAP-IG circuit drawn (0: no edge circuit)")
    parser.add_argument("--report", default="circuits-report", help="folder for PNGs and HTML")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prepend_bos", type=parse_bool, default=False,
                        help="True: the tokenizer's BOS token (GPT-2: <|endoftext|>) before both prompts")
    return parser.parse_args(argv)


def corrupted_prompt(model, tokenizer, ids: torch.Tensor, text: str | None, prepend_bos: bool = False) -> torch.Tensor:
    """--corrupt's ids, or the clean prompt's tokens in a fixed random order (an encoder's [CLS]/[SEP] kept)."""
    if text is not None:
        return encode_prompt(model, tokenizer, text, "corrupt", prepend_bos)
    inner = 1 if model.model_type == "bert" and ids.size(1) > 3 else 0
    order = torch.randperm(ids.size(1) - 2 * inner, generator=torch.Generator().manual_seed(0)) + inner
    order = torch.cat([torch.arange(inner), order, torch.arange(ids.size(1) - inner, ids.size(1))])
    return ids[:, order.to(ids.device)]


def main(argv: list[str]) -> None:
    args = parse(argv)
    model, tokenizer = load(args)
    ids = encode_prompt(model, tokenizer, args.prompt, "prompt", args.prepend_bos)
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    if model.model_type == "bert":
        return explain_encoder(args, model, tokenizer, ids, tokens)
    with torch.no_grad():
        (logits, _), cache = model.run_with_cache(ids)
    predicted = int(logits[0, -1].argmax())
    target = predicted if args.target is None else single_token(tokenizer, args.target, "target")
    wrong = None if args.wrong is None else single_token(tokenizer, args.wrong, "wrong")
    print(f"BOS: {'prepended ' + repr(tokens[0]) if args.prepend_bos else 'none (--prepend_bos=True adds it)'}")
    print(f"prompt: {len(tokens)} tokens; predicted next token {tokenizer.decode([predicted])!r}; "
          f"explaining {tokenizer.decode([target])!r}" + ("" if wrong is None else f" minus {tokenizer.decode([wrong])!r}"))
    labels, values = attribution(cache, target, wrong, args.top_k)
    det_header, det_rows, det_scores = head_detectors(model, ids)
    lens_fig = lens_table(cache, tokens, tokenizer)
    corrupted = corrupted_prompt(model, tokenizer, ids, args.corrupt, args.prepend_bos)
    metric = lambda lg: lg[0, -1, target] - (lg[0, -1, wrong] if wrong is not None else 0.0)  # noqa: E731
    print(f"\npatching the clean prompt into the corrupted one (clean metric {float(metric(logits)):.3f}):")
    tables, approx, base = patch_all(model, ids, corrupted, cache, metric)
    figures = {"head_detectors": report.detector_figure(det_scores), "logit_lens": lens_fig, "attribution": report.attribution_figure(labels, values),
               **patch_figures(model, tokens, tables, approx, base)}
    sections = []
    if args.edges > 0:
        edge_figures, edge_table = edge_circuit(model, ids, corrupted, target, wrong, args.edges)
        figures.update(edge_figures)
        sections.append(("edge circuit: its edges", edge_table))
    write_report(args.report, cache, tokens, det_header, det_rows, figures, sections)


def edge_circuit(model, ids, corrupted, target: int, wrong: int | None, n_edges: int):
    """EAP-IG (5 steps) over every edge for the prompt pair, its greedy circuit of n_edges and the faithfulness
    curve: ({name: figure}, HTML table of the circuit's edges)."""
    pairs = Pairs(ids.cpu(), corrupted.cpu())
    metric = lambda lg, batch: lg[:, -1, target] - (lg[:, -1, wrong] if wrong is not None else 0.0)  # noqa: E731
    scores = eap_ig(model, pairs, metric=metric, steps=5)
    mask = greedy_circuit(scores, n_edges)
    curve = faithfulness_curve(model, pairs, metric=metric, scores=scores, method="greedy")
    rows = top_edges_rows(scores.graph, scores.values, mask)
    print(f"\nedge circuit (EAP-IG, {len(scores.graph)} edges): faithfulness CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f}; "
          f"the greedy circuit's best edges:")
    print_table(["rank", "edge", "EAP-IG score"], [[r, e, f"{v:+.4f}"] for r, e, v in rows[:10]])
    figures = {"edge_circuit": circuit_figure(scores.graph, mask, scores.values, "EAP-IG circuit"),
               "faithfulness": faithfulness_figure({"EAP-IG, greedy": curve})}
    return figures, report.html_table(["rank", "edge", "EAP-IG score"], rows)


def explain_encoder(args, model, tokenizer, ids: torch.Tensor, tokens: list[str]) -> None:
    """An encoder's sentence: detectors, attention statistics, patching against a hidden-state metric."""
    for option in ("target", "wrong"):
        if getattr(args, option) is not None:
            raise ConfigError(f"--{option} names a predicted token, which an encoder's sentence has not; drop it "
                              "(patching measures the sentence's hidden states).")
    with torch.no_grad():
        _, cache = model.run_with_cache(ids)
        final = model.encode(ids)  # (1, T, C): the encoder's output
    print(f"prompt: {len(tokens)} tokens (an encoder: no next-token prediction to explain)")
    if model.config.post_norm:
        print("note: this encoder is post-norm (each block normalises the residual sum), so its output is not a sum "
              "of the heads' and MLPs' outputs: there is no direct attribution or logit lens; patching is exact anyway.")
    det_header, det_rows, det_scores = head_detectors(model, ids, tokenizer.special_ids.get("[SEP]"))
    maps = {k: v for k, v in cache.items() if k.endswith(".pattern")}
    print("\nattention statistics (entropy in nats, largest weight, mean distance to the key):")
    print(stats_table(head_stats_all(maps)))
    corrupted = corrupted_prompt(model, tokenizer, ids, args.corrupt)

    def metric(hidden):  # the patched run's sentence vector against the clean one's (1 = the clean run)
        return torch.cosine_similarity(hidden.mean(1), final.mean(1).to(hidden.dtype), dim=-1).mean()

    print("\npatching the clean sentence into the corrupted one; metric = cosine similarity of the mean-pooled final "
          "hidden states with the clean run's (clean 1.000):")
    with encoder_only(model):
        tables, approx, base = patch_all(model, ids, corrupted, cache, metric)
    write_report(args.report, cache, tokens, det_header, det_rows,
                 {"head_detectors": report.detector_figure(det_scores), **patch_figures(model, tokens, tables, approx, base)})


@contextmanager
def encoder_only(model):
    """While the block runs, the encoder's forward gives its final hidden states (its MLM head, if any, set aside),
    which the patching metric reads."""
    head, model.head = model.head, None
    try:
        yield model
    finally:
        model.head = head


def patch_figures(model, tokens, tables, approx, base) -> dict:
    """The exact and attribution patching tables as figures."""
    heads = [f"H{h}" for h in range(model.config.n_head)]
    return {"patch_resid_pre": report.patching_figure(tables["resid_pre"].numpy() - base, tokens, "layer",
                                                      "position", "exact patching: resid_pre (metric - corrupted)"),
            "patch_heads": report.patching_figure(tables["attn_head_out_all_pos"].numpy() - base, heads, "layer",
                                                  "head", "exact patching: head outputs (metric - corrupted)"),
            "attr_patch_resid_pre": report.patching_figure(approx["resid_pre"].numpy(), tokens, "layer",
                                                           "position", "attribution patching: resid_pre"),
            "attr_patch_heads": report.patching_figure(approx["attn_head_out_all_pos"].numpy(), heads, "layer",
                                                       "head", "attribution patching: head outputs")}


def write_report(folder, cache, tokens, det_header, det_rows, figures: dict, extra: list | tuple = ()) -> None:
    """PNGs, circuits.html and the attention viewer into `folder`; `extra`: more (heading, HTML) sections."""
    os.makedirs(folder, exist_ok=True)
    sections = [("head detectors", report.html_table(det_header, det_rows)), *extra]
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
    except (UserError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
