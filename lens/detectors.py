"""Head detectors: what kind of head is each? Scores in [0, 1] per (layer, head), TransformerLens' conventions.

    scores = detect_head(model, tokens, "previous_token_head")          # (n_layer, n_head)
    scores = induction_scores(model, seq_len=20)                          # on repeated random tokens
    sink = attention_sink_scores(model, tokens, attention_mask=mask)      # weight on the first real position
    sep = separator_sink_scores(bert, tokens)                             # BERT's [SEP] sink
    align = alignment_scores(model, src, tgt, reversal_alignment(T, S))   # encoder-decoder cross-attention

detect_head's "mul" score is the share of a head's attention that falls on the detection pattern's
positions (mean over query rows' total weight); "abs" is 1 - the mean absolute difference per row.
Both are averaged over the batch. Every detector takes attention_mask= (padding left out: a padded row scores
as it does alone) and, for a BERT, token_type_ids=. A bidirectional stack (BERT, an encoder) gets the patterns without
the causal cut: duplicate tokens and induction targets on both sides of the query.
"""

import inspect

import torch

from lens.modes import evaluating
from lens.patching import as_inputs
from lens.recorder import real_positions, strip_padding
from lens.cache import LensError, get_stack

HEAD_NAMES = ("previous_token_head", "duplicate_token_head", "induction_head")


def get_previous_token_head_detection_pattern(tokens: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """(T, T): 1 at (i, i - 1)."""
    T = tokens.shape[-1]
    return torch.diag(torch.ones(T - 1), diagonal=-1)


def get_duplicate_token_head_detection_pattern(tokens: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """(T, T): 1 at (i, j), j != i, where token j equals token i (j < i when causal)."""
    same = (tokens[:, None] == tokens[None, :]).float()  # (T, T)
    same.fill_diagonal_(0.0)
    return same.tril() if causal else same


def get_induction_head_detection_pattern(tokens: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """(T, T): 1 at (i, j) where token j - 1 equals token i (j - 1 < i when causal): the token after an
    earlier copy of the current one."""
    duplicate = get_duplicate_token_head_detection_pattern(tokens, causal=False)
    shifted = torch.zeros_like(duplicate)
    shifted[:, 1:] = duplicate[:, :-1]  # column j holds the match at j - 1
    return shifted.tril() if causal else shifted  # j <= i: the copy's successor is at or before the query


PATTERNS = {"previous_token_head": get_previous_token_head_detection_pattern,
            "duplicate_token_head": get_duplicate_token_head_detection_pattern,
            "induction_head": get_induction_head_detection_pattern}


def compute_head_attention_similarity_score(attention_pattern: torch.Tensor, detection_pattern: torch.Tensor,
                                            exclude_bos: bool = False, exclude_current_token: bool = False,
                                            error_measure: str = "mul") -> float:
    """Similarity of one head's (T, S) pattern with a detection pattern: "mul" (share) or "abs"."""
    pattern = attention_pattern.float().clone()
    detection = detection_pattern.to(pattern)
    if error_measure == "mul":
        if exclude_bos:
            pattern[:, 0] = 0
        if exclude_current_token:
            pattern.fill_diagonal_(0)
        return ((pattern * detection).sum() / pattern.sum()).item()
    diff = (pattern - detection).abs()
    if exclude_bos:
        diff[:, 0] = 0
    if exclude_current_token:
        diff.fill_diagonal_(0)
    return 1 - round((diff.mean() * len(diff)).item(), 3)


def layer_heads(heads, n_layers: int, n_head: int) -> dict[int, list[int]]:
    """TransformerLens' `heads` argument (None, [(layer, head)], {layer: [heads]}) as {layer: [heads]}, checked."""
    if heads is None:
        return {layer: list(range(n_head)) for layer in range(n_layers)}
    pairs = [(layer, h) for layer, hs in heads.items() for h in hs] if isinstance(heads, dict) else list(heads)
    grouped: dict[int, list[int]] = {}
    for layer, head in pairs:
        if not 0 <= layer < n_layers or not 0 <= head < n_head:
            raise LensError(f"head ({layer}, {head}) does not exist: layers are 0..{n_layers - 1}, "
                            f"heads 0..{n_head - 1}.")
        grouped.setdefault(layer, []).append(head)
    return grouped


def run_for_patterns(model, tokens, cache, stack: str | None, attention: str, attention_mask=None,
                     token_type_ids=None):
    """(the cache, the stack, the stack's own token ids (B, T), its queries' and keys' real positions), running
    the model (with the padding mask and segment ids) when no cache is given; the real positions are None
    without a mask."""
    structure = get_stack(model, stack)
    if getattr(cache, "training", False):
        raise LensError("the cache was captured in training mode with dropout, so its patterns are noisy; call "
                        "model.eval() and run run_with_cache again (or pass no cache).")
    inputs = tuple(x[None] if x.dim() == 1 else x for x in as_inputs(tokens))  # one (T,) sequence: (1, T)
    run_kwargs, query_real, key_real = padding_masks(structure, attention, attention_mask, inputs)
    if token_type_ids is not None:
        if "token_type_ids" not in inspect.signature(model.forward).parameters:
            raise LensError(f"this {type(model).__name__} has no segment embeddings; drop token_type_ids.")
        types = torch.as_tensor(token_type_ids)
        run_kwargs["token_type_ids"] = (types[None] if types.dim() == 1 else types).to(inputs[0].device)
    if cache is None:
        with torch.no_grad(), evaluating(model):
            _, cache = model.run_with_cache(*inputs, names_filter=f"*{attention}.pattern", **run_kwargs)
    ids = inputs[-1] if structure.prefix == "decoder." else inputs[0]
    return cache, structure, ids, query_real, key_real


def padding_masks(structure, attention: str, attention_mask, inputs: tuple[torch.Tensor, ...]):
    """(the model's mask keyword arguments, the queries' real positions (B, T), the keys' (B, S)) for a padded
    batch: GPT and BERT take attention_mask (B, T); an encoder-decoder (src_mask, tgt_mask), like its tokens."""
    if attention_mask is None:
        return {}, None, None
    device = inputs[0].device
    if structure.prefix not in ("encoder.", "decoder."):
        real = real_positions(attention_mask, tuple(inputs[0].shape))
        return {"attention_mask": real.to(device)}, real, real
    if not (isinstance(attention_mask, (tuple, list)) and len(attention_mask) == 2):
        raise LensError("an encoder-decoder takes attention_mask=(src_mask, tgt_mask) like its tokens (src, tgt); "
                        "either may be None.")
    src, tgt = (None if m is None else real_positions(m, tuple(x.shape), name)
                for m, x, name in zip(attention_mask, inputs, ("src_mask", "tgt_mask")))
    run_kwargs = {key: m.to(device) for key, m in (("src_mask", src), ("tgt_mask", tgt)) if m is not None}
    encoder = structure.prefix == "encoder."
    return run_kwargs, src if encoder else tgt, src if encoder or attention == "cross_attn" else tgt


def detect_head(model, tokens, detection_pattern, heads=None, cache=None, *, exclude_bos: bool = False,
                exclude_current_token: bool = False, error_measure: str = "mul", stack: str | None = None,
                attention: str = "attn", attention_mask=None, token_type_ids=None) -> torch.Tensor:
    """Score every head's pattern on `tokens` ((B, T) ids; Seq2Seq: (src, tgt)) against a detection pattern.

    detection_pattern: one of HEAD_NAMES (built from each sequence's tokens) or a (T, S) tensor.
    Heads left out of `heads` score -1. Returns (n_layer, n_head), the mean over the batch.

    attention_mask (B, T), 1 at real tokens and 0 at padding (Seq2Seq: (src_mask, tgt_mask), either None),
    is given to the model and leaves padding out as queries and keys: each row scores as it would alone
    (named patterns are built from its real tokens; a (T, S) tensor loses the same rows and columns).
    With `cache`, pass the mask the cache was run with. token_type_ids (B, T): a BERT's segment ids.
    """
    if error_measure not in ("mul", "abs"):
        raise LensError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}.")
    if isinstance(detection_pattern, str) and detection_pattern not in PATTERNS:
        raise LensError(f"unknown head type {detection_pattern!r}; pick one of {', '.join(HEAD_NAMES)} or "
                        "pass a (T, S) detection pattern.")
    if isinstance(detection_pattern, str) and attention == "cross_attn":
        raise LensError(f"{detection_pattern} compares a sequence with itself; for cross-attention use "
                        "alignment_scores with a source-target map.")
    cache, structure, ids, query_real, key_real = run_for_patterns(model, tokens, cache, stack, attention,
                                                                   attention_mask, token_type_ids)
    shortest = ids.size(1) if query_real is None else int(query_real.sum(dim=1).min())
    if isinstance(detection_pattern, str) and shortest < 2:
        raise LensError(f"{detection_pattern} needs sequences of at least 2 tokens (a previous or earlier token to "
                        f"attend to); {'these have' if query_real is None else 'the shortest row has'} {shortest}.")
    n_layers = len(structure.blocks)
    n_head = getattr(structure.blocks[0], attention).n_head
    scores = -torch.ones(n_layers, n_head)
    for layer, hs in layer_heads(heads, n_layers, n_head).items():
        pattern = cache[structure.name(layer, f"{attention}.pattern")]  # (B, nh, T, S)
        for b in range(pattern.size(0)):
            queries = None if query_real is None else query_real[b]
            keys = None if key_real is None else key_real[b]
            if isinstance(detection_pattern, str):  # a self-attention pattern: queries and keys are one sequence
                row_ids = ids[b].cpu()
                target = PATTERNS[detection_pattern](row_ids if queries is None else row_ids[queries],
                                                     causal=structure.causal)
            else:  # given over the batch's (T, S) positions: it loses the row's padding too
                target = torch.as_tensor(detection_pattern)
                if target.shape != pattern.shape[-2:]:
                    raise LensError(f"the detection pattern is {tuple(target.shape)} but "
                                    f"{structure.name(layer, attention)} has ({pattern.size(2)}, {pattern.size(3)}) "
                                    "patterns here.")
                target = strip_padding(target, queries, keys)
            row = strip_padding(pattern[b], queries, keys)  # (nh, T, S) without padding
            for h in hs:
                s = compute_head_attention_similarity_score(row[h].cpu(), target, exclude_bos,
                                                            exclude_current_token, error_measure)
                scores[layer, h] = s if b == 0 else scores[layer, h] + s
        for h in hs:
            scores[layer, h] /= pattern.size(0)
    return scores


def repeated_random_tokens(vocab_size: int, seq_len: int, batch: int = 8, seed: int = 0,
                           bos: int | None = None) -> torch.Tensor:
    """(batch, [1 +] 2 seq_len) ids: a random sequence followed by itself (after a BOS id if given)."""
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)
    tokens = torch.cat([half, half], dim=1)
    return tokens if bos is None else torch.cat([torch.full((batch, 1), bos), tokens], dim=1)


def induction_scores(model, seq_len: int | None = None, batch: int = 8, seed: int = 0,
                     halves: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """detect_head's induction score of every head on repeated random tokens: (n_layer, n_head).

    seq_len defaults to half the context (block_size // 2). `halves` (B, L) scores those sequences,
    each followed by itself, instead: e.g. validation text, whose tokens a small model has learnt
    (a character model barely trains the rare characters that random ids draw as often as 'e').
    """
    if "attention_mask" in kwargs:
        raise LensError("induction_scores repeats unpadded sequences and takes no attention_mask; score a padded "
                        "batch of repeated sequences with detect_head(..., \"induction_head\", attention_mask=).")
    if halves is None:
        seq_len = seq_len or model.config.block_size // 2
        halves = repeated_random_tokens(model.config.vocab_size, seq_len, batch, seed)[:, :seq_len]
    if 2 * halves.size(1) > model.config.block_size:
        raise LensError(f"2 x seq_len ({2 * halves.size(1)}) exceeds block_size {model.config.block_size}; "
                        f"use seq_len <= {model.config.block_size // 2}.")
    device = next(model.parameters()).device
    return detect_head(model, torch.cat([halves, halves], dim=1).to(device), "induction_head", **kwargs)


def sink_scores(model, tokens, sink_keys, cache=None, stack: str | None = None, attention: str = "attn",
                attention_mask=None, token_type_ids=None) -> torch.Tensor:
    """Mean weight every head puts on a row's sink keys: (n_layer, n_head), the mean over rows of the mean
    over their real query rows (after the first in self-attention: a causal row 0 sees only key 0).

    sink_keys(ids of one row's real tokens (T,)) -> a bool (T,) of the keys that count as the sink.
    """
    cache, structure, ids, query_real, key_real = run_for_patterns(model, tokens, cache, stack, attention,
                                                                   attention_mask, token_type_ids)
    rows = []
    for layer in range(len(structure.blocks)):
        pattern = cache[structure.name(layer, f"{attention}.pattern")].float()  # (B, nh, T, S)
        per_row = []
        for b in range(pattern.size(0)):
            row = strip_padding(pattern[b], None if query_real is None else query_real[b],
                                None if key_real is None else key_real[b]).cpu()  # (nh, t, s)
            keys = ids[b].cpu() if key_real is None or attention == "cross_attn" else ids[b].cpu()[key_real[b]]
            sink = sink_keys(keys) if attention != "cross_attn" else sink_keys(torch.arange(row.size(-1)))
            first = 1 if row.size(1) > 1 and attention == "attn" else 0
            per_row.append(row[:, first:][..., sink].sum(-1).mean(-1))  # (nh,)
        rows.append(torch.stack(per_row).mean(0))
    return torch.stack(rows)


def attention_sink_scores(model, tokens, cache=None, stack: str | None = None, attention: str = "attn",
                          attention_mask=None, token_type_ids=None) -> torch.Tensor:
    """Mean weight every head puts on each row's first real key, over its real query rows after the first:
    (n_layer, n_head). attention_mask (B, T) leaves padding out, so a padded row scores as it would alone."""
    def first(keys: torch.Tensor) -> torch.Tensor:
        return torch.arange(len(keys)) == 0

    return sink_scores(model, tokens, first, cache, stack, attention, attention_mask, token_type_ids)


def separator_sink_scores(model, tokens, sep_id: int | None = None, cache=None, stack: str | None = None,
                          attention_mask=None, token_type_ids=None) -> torch.Tensor:
    """BERT's [SEP] sink (Clark et al., 2019): the mean weight every head puts on the [SEP] tokens of each
    row, over its real query rows: (n_layer, n_head). sep_id defaults to the model's tokenizer's [SEP]."""
    if sep_id is None:
        sep_id = getattr(getattr(model, "tokenizer", None), "special_ids", {}).get("[SEP]")
        if sep_id is None:
            raise LensError("the model's tokenizer has no [SEP] token; pass sep_id= (the separator's token id).")
    ids = as_inputs(tokens)[0]
    if not (torch.as_tensor(ids) == sep_id).any():
        raise LensError(f"the tokens hold no [SEP] (id {sep_id}); frame each sentence as [CLS] ... [SEP].")
    return sink_scores(model, tokens, lambda keys: keys == sep_id, cache, stack, "attn", attention_mask, token_type_ids)


def reversal_alignment(tgt_len: int, src_len: int) -> torch.Tensor:
    """(T, S) map of the reversal task: decoder position t (BOS first) emits source token S - 1 - t."""
    alignment = torch.zeros(tgt_len, src_len)
    for t in range(min(tgt_len, src_len)):
        alignment[t, src_len - 1 - t] = 1.0
    return alignment


def alignment_scores(model, src: torch.Tensor, tgt: torch.Tensor, alignment: torch.Tensor, cache=None,
                     **kwargs) -> torch.Tensor:
    """Share of each decoder cross-attention head's weight on the aligned source positions: (n_layer, n_head).

    alignment: (T, S) 0/1 map (e.g. reversal_alignment); query rows with no aligned source count zero
    weight in the numerator and full weight in the denominator, as in detect_head's "mul" score.
    """
    if not hasattr(model, "encoder"):
        raise LensError("alignment_scores needs an encoder-decoder (cross-attention); this model has none.")
    return detect_head(model, (src, tgt), alignment, cache=cache, stack="decoder", attention="cross_attn", **kwargs)
