"""What sample.py does with each model family: continue a prompt (GPT), fill its masks (BERT), decode
each of its lines (encoder-decoder, Transformer or RNN); and the attention maps of the result (--attention_dir).

training/families.py registers each function as its family's `decode`.
"""

import os
import sys
from contextlib import nullcontext

import torch

from data.documents import document_ids, separator_id
from data.streaming import StreamDecoder
from lens.heatmaps import views_from_maps, write_attention
from lens.interventions import ablate_heads, head_means, parse_heads
from lens.recorder import AttentionRecorder, head_stats_all, stats_table
from lens.viewer import TOP_K
from model.documents import last_documents
from model.fast_decode import StaticDecoder
from model.generation import pack
from training.config import SampleConfig
from training.system import autocast
from weights.common import ConfigError


def fast_decoder(model, batch_size: int) -> StaticDecoder:
    """--fast_decode's decoder; says on stderr that its first token waits for the compilation."""
    print(f"--fast_decode: a static KV cache for {batch_size} prompt(s); the first token waits while the "
          "one-token step compiles", file=sys.stderr)
    return StaticDecoder(model, batch_size, compile=True)


def read_prompt(start: str) -> str:
    """The prompt text: `start` itself, or the contents of the file named by FILE:path."""
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"cannot read prompt file {path}; give an existing UTF-8 text file after FILE:.")


def last_documents_of(idx: torch.Tensor, mask: torch.Tensor | None, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """--doc_mask: each prompt's last document, from its last separator (<|endoftext|> or [EOS]), left-padded,
    and its mask: all that a model trained with document masking sees (what model.generate(doc_ids=) continues)."""
    sep = separator_id(tokenizer)
    if sep is None:
        raise ConfigError("--doc_mask=True splits the prompt at <|endoftext|> or [EOS], and this model's tokenizer has "
                          "neither; drop --doc_mask.")
    return last_documents(idx, document_ids(idx, sep), mask)


def last_document(prompt_ids: list[int], tokenizer) -> list[int]:
    """--doc_mask: the prompt's last document (last_documents_of), saying so on stderr when it is not the whole."""
    last = last_documents_of(torch.tensor([prompt_ids]), None, tokenizer)[0][0].tolist()
    if len(last) < len(prompt_ids):
        print(f"(--doc_mask: the model continues the prompt's last document, its last {len(last)} tokens)",
              file=sys.stderr)
    return last


def sample_gpt(model, tokenizer, cfg: SampleConfig, device: str, dtype: str) -> None:
    """Continue the prompt num_samples times, streaming each token as it comes (--prompts: a batch of them).
    With --doc_mask the model reads the prompt's last document alone (the whole prompt is printed)."""
    if cfg.prompts:
        return sample_gpt_batch(model, tokenizer, cfg, device, dtype)
    prefix = tokenizer.prefix_ids() if cfg.prompt_prefix else []
    shown_ids = tokenizer.encode(read_prompt(cfg.start), allow_specials=True)  # the text as written ([EOS] by name)
    prompt_ids = prefix + shown_ids
    if not prompt_ids:
        raise ConfigError("the prompt is empty; pass some text with --start.")
    if cfg.doc_mask:
        prompt_ids = last_document(prompt_ids, tokenizer)
    block_size = model.config.block_size
    if len(prompt_ids) > block_size:
        print(f"(prompt of {len(prompt_ids)} tokens cropped to its last {block_size}, the context window)",
              file=sys.stderr)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    interventions = []
    if cfg.ablate:
        heads = parse_heads(cfg.ablate, model)
        means = head_means(model, idx[:, -block_size:], heads=heads) if cfg.ablate_mode == "mean" else None
        interventions = ablate_heads(heads, cfg.ablate_mode, means)
    recorder = AttentionRecorder(model) if cfg.attention_dir else None
    if recorder:  # fail before generating, not after
        try:
            os.makedirs(cfg.attention_dir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create {cfg.attention_dir} ({e.strerror}); pick a writable --attention_dir.")
    if cfg.fast_decode and (recorder or interventions or not cfg.use_cache):
        raise ConfigError("--fast_decode runs the plain cached model; drop --attention_dir, --ablate or --use_cache=False.")
    stream = fast_decoder(model, 1).generate_stream if cfg.fast_decode else \
        lambda *a, generator: model.generate_stream(*a, use_cache=cfg.use_cache, generator=generator)
    samples = []
    for n in range(cfg.num_samples):
        sys.stdout.write(tokenizer.decode(shown_ids))
        new_ids, streamer = [], StreamDecoder(tokenizer)  # each new character once, when complete
        record = recorder if n == 0 and recorder else nullcontext()  # maps of the first sample
        with autocast(device, dtype), model.hooks(interventions), record:
            for token in stream(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, generator=generator):
                new_ids.append(token.item())
                text = streamer.push(new_ids[-1])
                if text:
                    sys.stdout.write(text)
                    sys.stdout.flush()
            if n == 0 and recorder and not new_ids:  # nothing generated: record the prompt alone
                with torch.no_grad():
                    model(idx[:, -block_size:])
        sys.stdout.write(streamer.flush())
        sys.stdout.write("\n" + ("-" * 40 + "\n" if n + 1 < cfg.num_samples else ""))
        samples.append(new_ids)
    if recorder:
        first = max(0, len(prompt_ids) - block_size)  # tokens cropped from the prompt were never seen
        maps = {name: m[..., first:, first:] for name, m in recorder.maps(start_len=len(prompt_ids)).items()}
        ids = (prompt_ids + samples[0])[first:]
        tokens = [tokenizer.decode([i]) for i in ids[:next(iter(maps.values())).size(-1)]]  # the last has no row
        write_maps(maps, tokens, cfg.attention_dir, f"attention: {tokenizer.decode(ids)[:60]}",
                   top_k=cfg.attention_top_k, prompt_length=len(prompt_ids) - first)


def read_prompt_lines(path: str, tokenizer, block_size: int, prefix: list[int]) -> list[list[int]]:
    """Token ids of each line of a prompts file (special tokens by name, e.g. [EOS]), after `prefix`; an empty
    line is an error, a long one keeps its end."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"cannot read prompts file {path}; give an existing UTF-8 text file, one prompt per line.")
    if not lines:
        raise ConfigError(f"prompts file {path} is empty; put one prompt per line.")
    prompts = []
    for n, line in enumerate(lines, 1):
        ids = tokenizer.encode(line, allow_specials=True)
        if not ids:
            raise ConfigError(f"line {n} of {path} is empty; remove it or put a prompt on it.")
        ids = prefix + ids
        if len(ids) > block_size:
            print(f"(prompt {n}: {len(ids)} tokens cropped to its last {block_size}, the context window)",
                  file=sys.stderr)
        prompts.append(ids[-block_size:])
    return prompts


def sample_gpt_batch(model, tokenizer, cfg: SampleConfig, device: str, dtype: str) -> None:
    """Continue every line of the prompts file at once (a left-padded batch); print each one labelled.

    Prompt i samples with its own generator (seed + i - 1), so it gets the same text in any batch; with
    --doc_mask, each line continues its last document.
    """
    if cfg.attention_dir or cfg.ablate:
        raise ConfigError("--attention_dir and --ablate work on one prompt; pass it with --start instead of --prompts.")
    if cfg.fast_decode and not cfg.use_cache:
        raise ConfigError("--fast_decode decodes with its static KV cache; drop --use_cache=False.")
    prefix = tokenizer.prefix_ids() if cfg.prompt_prefix else []
    prompts = read_prompt_lines(cfg.prompts, tokenizer, model.config.block_size, prefix)
    idx, mask = pack([torch.tensor(ids, dtype=torch.long, device=device) for ids in prompts])
    if cfg.doc_mask:  # each line's last document: all that the next tokens see (then printed after the whole line)
        idx, mask = last_documents_of(idx, mask, tokenizer)
    generators = [torch.Generator(device=device).manual_seed(cfg.seed + i) for i in range(len(prompts))]
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=generators,
                    attention_mask=mask)
    fast = fast_decoder(model, len(prompts)) if cfg.fast_decode else None
    for n in range(cfg.num_samples):
        with autocast(device, dtype):
            out = fast.generate(idx, cfg.max_new_tokens, **sampling) if fast else \
                model.generate(idx, cfg.max_new_tokens, use_cache=cfg.use_cache, **sampling)
        for i, ids in enumerate(prompts):
            label = f"[prompt {i + 1}" + (f", sample {n + 1}]" if cfg.num_samples > 1 else "]")
            shown = ids[len(prefix):] if len(ids) > len(prefix) and ids[:len(prefix)] == prefix else ids
            print(f"{label} {tokenizer.decode(shown + out[i, idx.size(1):].tolist())}")


def write_maps(maps: dict, tokens: list[str], out_dir: str, title: str, source_tokens: list[str] | None = None,
               top_k: int = TOP_K, prompt_length: int | None = None) -> None:
    """Write attention maps (PNG per layer, HTML viewer, npz) and print per-head statistics; `prompt_length`:
    the tokens from there on were generated (the viewer marks them)."""
    try:
        paths = write_attention(out_dir, views_from_maps(maps, tokens, source_tokens, prompt_length=prompt_length),
                                title=title, top_k=top_k)
    except OSError as e:
        raise ConfigError(f"cannot write attention maps to {out_dir} ({e.strerror}); pick a writable --attention_dir.")
    print(stats_table(head_stats_all(maps)))
    print(f"wrote {len(paths)} files to {out_dir} (open {out_dir}/attention.html in a browser)", file=sys.stderr)


@torch.no_grad()
def fill_mask(model, tokenizer, cfg: SampleConfig, device: str, dtype: str) -> None:
    """Fill every [MASK] of the prompt, most confident first, printing each one's top candidates.

    The model reads each mask in a window of the prompt framed as in training ([CLS] text [SEP]),
    centred on the mask when the prompt is longer than the context window.
    """
    if getattr(model, "head", None) is None:
        raise ConfigError("this encoder has no MLM head (a headless BertModel folder), so it cannot fill masks; "
                          "load a BertForMaskedLM folder, or use its hidden states from Python (model.encode).")
    ids = tokenizer.encode(read_prompt(cfg.start), allow_specials=True)
    mask_id, cls_id, sep_id = (tokenizer.special_ids.get(s) for s in ("[MASK]", "[CLS]", "[SEP]"))
    if mask_id is None or mask_id not in ids:
        raise ConfigError('the prompt has no [MASK]; put one where a token is missing, e.g. '
                          '--start="To be, or not to [MASK]".')
    ids = ids[1:] if ids[0] == cls_id else ids
    ids = ids[:-1] if ids[-1] == sep_id else ids
    head, tail = [t for t in (cls_id,) if t is not None], [t for t in (sep_id,) if t is not None]
    width = model.config.block_size - len(head) - len(tail)  # prompt tokens the model sees at once
    if width < 1:
        raise ConfigError(f"block_size {model.config.block_size} leaves no room for text; this model cannot fill masks.")
    masks = [pos for pos, t in enumerate(ids) if t == mask_id]
    numbers = {pos: n + 1 for n, pos in enumerate(masks)}
    remaining = list(masks)
    while remaining:
        starts = [min(max(0, pos - width // 2), max(0, len(ids) - width)) for pos in remaining]
        windows = torch.tensor([head + ids[s:s + width] + tail for s in starts], dtype=torch.long, device=device)
        with autocast(device, dtype):
            logits = model(windows)[0].float()  # (M, L, V): one window per remaining mask
        rows = torch.arange(len(remaining), device=device)
        logits = logits[rows, torch.tensor([len(head) + p - s for p, s in zip(remaining, starts)], device=device)]
        logits[:, tokenizer.vocab_size:] = float("-inf")  # propose text, never special tokens or unused ids
        logits[:, tokenizer.special_token_ids()] = float("-inf")
        top = torch.softmax(logits, dim=-1).topk(min(cfg.candidates, int(logits.isfinite().sum(-1).min())), dim=-1)
        best = top.values[:, 0].argmax().item()  # the mask the model is surest about goes first
        pos = remaining.pop(best)
        shown = "  ".join(f"{tokenizer.decode([t])!r} {p:.3f}"
                          for t, p in zip(top.indices[best].tolist(), top.values[best].tolist()))
        print(f"[MASK] {numbers[pos]} of {len(masks)}: {shown}")
        ids[pos] = top.indices[best, 0].item()
    print(tokenizer.decode(ids))
    if cfg.attention_dir:  # the filled text's maps (its first window when it is longer than the context)
        window = head + ids[:width] + tail
        with autocast(device, dtype):
            _, maps = model.run_with_cache(torch.tensor([window], device=device), names_filter="*.pattern", device="cpu")
        write_maps(maps, [tokenizer.decode([i]) for i in window], cfg.attention_dir,
                   f"attention: {tokenizer.decode(ids)[:60]}", top_k=cfg.attention_top_k)


def sample_seq2seq(model, tokenizer, cfg: SampleConfig, device: str, dtype: str) -> None:
    """Decode each line of the prompt as a source sequence; print one output line per source
    (num_samples of them with --decoding=sample)."""
    sources = [line for line in read_prompt(cfg.start).splitlines() if line.strip()]
    if not sources:
        raise ConfigError("the prompt is empty; pass a line of text with --start.")
    if cfg.attention_dir and not any(name.endswith(".pattern") for name in model.hook_names()):
        raise ConfigError("this model has no attention to draw (an RNN trained with attention=False); "
                          "drop --attention_dir.")
    ids = [tokenizer.encode(line) for line in sources]
    limit = model.config.source_block_size
    if max(map(len, ids)) > limit:
        raise ConfigError(f"a source line has {max(map(len, ids))} tokens; this model reads at most {limit}.")
    pad, bos, eos = (tokenizer.special_ids[s] for s in ("[PAD]", "[BOS]", "[EOS]"))
    src = torch.tensor([row + [pad] * (max(map(len, ids)) - len(row)) for row in ids], device=device)
    src_mask = torch.tensor([[True] * len(row) + [False] * (src.size(1) - len(row)) for row in ids], device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    with autocast(device, dtype):
        if cfg.decoding == "beam":
            outputs = [model.beam_search(src, bos, eos, src_mask, cfg.beam_size, cfg.max_new_tokens,
                                         cfg.length_penalty, cfg.use_cache)]
        elif cfg.decoding == "sample":
            outputs = [model.generate(src, bos, eos, src_mask, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                      cfg.top_p, cfg.use_cache, generator) for _ in range(cfg.num_samples)]
        else:
            outputs = [model.generate(src, bos, eos, src_mask, cfg.max_new_tokens, use_cache=cfg.use_cache)]
    for row in range(len(sources)):
        for out in outputs:
            print(tokenizer.decode(out[row]))
    if cfg.attention_dir:  # the first source and its first output, teacher-forced: encoder, decoder, cross maps
        target = [bos] + [int(i) for i in outputs[0][0]][:model.config.block_size - 1]
        with torch.no_grad(), autocast(device, dtype):
            _, maps = model.run_with_cache(src[:1, :len(ids[0])], torch.tensor([target], device=device),
                                           names_filter="*.pattern", device="cpu")
        write_maps(maps, [tokenizer.decode([i]) for i in target], cfg.attention_dir,
                   f"attention: {sources[0][:60]}", source_tokens=[tokenizer.decode([i]) for i in ids[0]],
                   top_k=cfg.attention_top_k)
