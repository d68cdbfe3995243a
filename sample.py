"""Sample text from a trained model, printing it as it is generated.

    python sample.py --out_dir=out --start="ROMEO:" --num_samples=2 --max_new_tokens=300
    python sample.py --start=FILE:prompt.txt --temperature=0.8 --top_k=200 --top_p=0.95 --seed=1
"""

import sys

import torch

from data.tokenizer import TokenizerError, from_meta
from model import CheckpointError, ConfigError, load_checkpoint, model_from_checkpoint
from model.config import SampleConfig, build, parse_args
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
    for n in range(cfg.num_samples):
        sys.stdout.write(tokenizer.decode(prompt_ids))
        new_ids = []
        with autocast(device, dtype):
            for token in model.generate_stream(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                                               use_cache=cfg.use_cache, generator=generator):
                before = tokenizer.decode(new_ids)
                new_ids.append(token.item())
                sys.stdout.write(tokenizer.decode(new_ids)[len(before):])  # whole characters only
                sys.stdout.flush()
        sys.stdout.write("\n" + ("-" * 40 + "\n" if n + 1 < cfg.num_samples else ""))


RUNNERS = {"gpt": sample_gpt}  # model_type -> what sample.py does with it


def main(argv: list[str]) -> None:
    cfg = build(parse_args(argv), SampleConfig)[0]
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    ckpt = load_checkpoint(cfg.out_dir)
    model = model_from_checkpoint(ckpt).to(device).eval()
    tokenizer = from_meta(ckpt["tokenizer"])
    runner = RUNNERS[ckpt.get("model_type", "gpt")]
    del ckpt
    runner(model, tokenizer, cfg, device, dtype)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, CheckpointError, TokenizerError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
