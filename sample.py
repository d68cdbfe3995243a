"""Sample text from a trained model, printing it as it is generated.

    python sample.py --out_dir=out --start="ROMEO:" --num_samples=2 --max_new_tokens=300
    python sample.py --start=FILE:prompt.txt --temperature=0.8 --top_k=200 --top_p=0.95 --seed=1
    python sample.py --start="ROMEO:" --max_new_tokens=40 --attention_dir=attn  # maps: PNG, HTML, npz
    python sample.py --start="ROMEO:" --ablate=0.1,1.3 --ablate_mode=mean        # knock heads out
    python sample.py --out_dir=out-bert --start="To be, or not to [MASK]"   # a BERT fills its masks
    python sample.py --out_dir=out-seq2seq --start="a line of text"      # encoder-decoder: greedy
    python sample.py --out_dir=out-seq2seq --start="a line" --decoding=beam --beam_size=4
    python sample.py --init_from=gpt2 --start="The meaning of life is"    # OpenAI's GPT-2 (or a HF folder)
"""

import os
import sys
from contextlib import nullcontext

import torch

from data.tokenizer import GPT2Tokenizer, TokenizerError, from_meta
from model import GPT, CheckpointError, ConfigError, load_checkpoint, model_from_checkpoint
from model.attention_maps import AttentionRecorder, head_stats_all, stats_table
from model.config import SampleConfig, build, parse_args
from model.interventions import ablate_heads, head_means, parse_heads
from model.system import autocast, pick_device, pick_dtype


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


def sample_gpt(model, tokenizer, cfg: SampleConfig, device: str, dtype: str) -> None:
    """Continue the prompt num_samples times, streaming each token as it comes."""
    prompt_ids = tokenizer.encode(read_prompt(cfg.start))
    if not prompt_ids:
        raise ConfigError("the prompt is empty; pass some text with --start.")
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
    samples = []
    for n in range(cfg.num_samples):
        sys.stdout.write(tokenizer.decode(prompt_ids))
        new_ids, printed = [], ""
        record = recorder if n == 0 and recorder else nullcontext()  # maps of the first sample
        with autocast(device, dtype), model.hooks(interventions), record:
            for token in model.generate_stream(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                                               use_cache=cfg.use_cache, generator=generator):
                new_ids.append(token.item())
                text = tokenizer.decode(new_ids)
                if not text.endswith("\ufffd"):  # BPE may split a character: wait for its last bytes
                    sys.stdout.write(text[len(printed):])
                    sys.stdout.flush()
                    printed = text
            if n == 0 and recorder and not new_ids:  # nothing generated: record the prompt alone
                with torch.no_grad():
                    model(idx[:, -block_size:])
        sys.stdout.write(tokenizer.decode(new_ids)[len(printed):])
        sys.stdout.write("\n" + ("-" * 40 + "\n" if n + 1 < cfg.num_samples else ""))
        samples.append(new_ids)
    if recorder:
        first = max(0, len(prompt_ids) - block_size)  # tokens cropped from the prompt were never seen
        maps = {name: m[..., first:, first:] for name, m in recorder.maps(start_len=len(prompt_ids)).items()}
        ids = (prompt_ids + samples[0])[first:]
        tokens = [tokenizer.decode([i]) for i in ids[:next(iter(maps.values())).size(-1)]]  # the last has no row
        write_maps(maps, tokens, cfg.attention_dir, f"attention: {tokenizer.decode(ids)[:60]}")


def write_maps(maps: dict, tokens: list[str], out_dir: str, title: str, source_tokens: list[str] | None = None) -> None:
    """Write attention maps (PNG per layer, HTML viewer, npz) and print per-head statistics."""
    from model.viz import views_from_maps, write_attention  # numpy/matplotlib only when asked for

    try:
        paths = write_attention(out_dir, views_from_maps(maps, tokens, source_tokens), title=title)
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
            logits = model(windows).float()  # (M, L, V): one window per remaining mask
        rows = torch.arange(len(remaining), device=device)
        logits = logits[rows, torch.tensor([len(head) + p - s for p, s in zip(remaining, starts)], device=device)]
        logits[:, tokenizer.base_vocab_size:] = float("-inf")  # propose text, never special tokens
        top = torch.softmax(logits, dim=-1).topk(min(cfg.candidates, tokenizer.base_vocab_size), dim=-1)
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
                   f"attention: {tokenizer.decode(ids)[:60]}")


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
    limit = model.config.source_len
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
                   f"attention: {sources[0][:60]}", source_tokens=[tokenizer.decode([i]) for i in ids[0]])


RUNNERS = {"gpt": sample_gpt, "bert": fill_mask}  # model_type -> what sample.py does with it
RUNNERS["seq2seq"] = sample_seq2seq
RUNNERS["rnn"] = sample_seq2seq  # the RNN encoder-decoder decodes the same way
# options that one model family alone uses: given for another, they would be silently ignored
ONLY_FOR = {"ablate": "gpt", "ablate_mode": "gpt", "candidates": "bert", "decoding": "seq2seq", "beam_size": "seq2seq",
            "length_penalty": "seq2seq"}
SAME_OPTIONS = {"rnn": "seq2seq"}  # a family that takes another's options
FAMILY_NAMES = {"gpt": "a GPT", "bert": "a BERT (fill-mask)", "seq2seq": "an encoder-decoder",
                "rnn": "an RNN encoder-decoder"}


def main(argv: list[str]) -> None:
    given = parse_args(argv)
    cfg = build(given, SampleConfig)[0]
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    if cfg.init_from == "resume":
        ckpt = load_checkpoint(cfg.out_dir)
        model = model_from_checkpoint(ckpt).to(device).eval()
        tokenizer = from_meta(ckpt["tokenizer"])
        model_type = ckpt.get("model_type", "gpt")
        del ckpt
    else:  # OpenAI's GPT-2 (or a Hugging Face GPT-2 folder) with GPT-2's tokenizer
        model = GPT.from_pretrained(cfg.init_from).to(device).eval()
        tokenizer, model_type = GPT2Tokenizer(), "gpt"
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ConfigError(f"{cfg.init_from} has {model.config.vocab_size} token ids, not GPT-2's "
                              f"{tokenizer.vocab_size}; sample from it with a checkpoint of ours instead.")
    source = cfg.out_dir if cfg.init_from == "resume" else cfg.init_from
    family = SAME_OPTIONS.get(model_type, model_type)
    for key in given:  # another family's option, set to something other than its default
        if ONLY_FOR.get(key, family) != family and getattr(cfg, key) != getattr(SampleConfig, key):
            hint = " (in Python: model.hooks(ablate_heads(...)), model/interventions.py)" if key == "ablate" else ""
            raise ConfigError(f"--{key} is for {FAMILY_NAMES[ONLY_FOR[key]]} checkpoint and {source} holds "
                              f"{FAMILY_NAMES[model_type]}; drop --{key}{hint}.")
    RUNNERS[model_type](model, tokenizer, cfg, device, dtype)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, CheckpointError, TokenizerError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
