"""Train a headscope model.

    python train.py                                    # char-level GPT on the built-in Shakespeare (CPU: ~3 min)
    python train.py config/shakespeare_char_cpu.py     # nanoGPT's documented CPU settings
    python train.py config/shakespeare_char.py --device=cuda --compile=True
    python train.py --out_dir=out --init_from=resume   # continue exactly where a run stopped
    python train.py config/finetune_shakespeare.py     # fine-tune OpenAI's GPT-2 on BPE Shakespeare
    python train.py --out_dir=out --init_from=resume --eval_only   # val loss of a checkpoint

A config file holds `name = value` lines; --key=value overrides it. An unknown key or a value of the
wrong type is an error that lists the valid keys.
"""

import dataclasses
import json
import math
import os
import sys
import time
import torch

from data.loader import BATCHES, dataset_dir, read_meta
from data.tokenizer import TokenizerError, from_meta
from data.tokens import TokenFileError
from model import MODELS, CheckpointError, ConfigError, TrainConfig, load_checkpoint, save_checkpoint
from model.config import MODEL_CONFIGS, build, field_types, from_dict, parse_args, to_dict
from model.pretrained import pretrained_config
from model.system import autocast as autocast_for, pick_device, pick_dtype

USER_ERRORS = (ConfigError, CheckpointError, TokenFileError, TokenizerError, FileNotFoundError)


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: str) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices and embeddings only (not on biases and norm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = device.startswith("cuda") or device == "cpu"  # one kernel for the whole update (CPU too since torch 2.4)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


@torch.no_grad()
def estimate_loss(model, batches, cfg: TrainConfig, autocast) -> dict:
    """Mean loss (and the batch maker's own metrics) over eval_iters batches of each split.

    The same batches at every evaluation, drawn from a generator of their own so that training's
    random state is untouched (exact resume).
    """
    model.eval()
    out = {}
    for split in ("train", "val"):
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        sums = {}
        for _ in range(cfg.eval_iters):
            batch = batches.get(split, gen)
            with autocast:
                logits, loss = model(**batch)
            values = {"loss": loss.item()}
            if hasattr(batches, "eval_metrics"):
                values.update(batches.eval_metrics(logits, batch))
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
        out.update({f"{split}_{name}": total / cfg.eval_iters for name, total in sums.items()})
    model.train()
    return out


def load_config(argv: list[str]):
    """Build (TrainConfig, model config, checkpoint or None) from the command line."""
    values = parse_args(argv)
    model_type = str(values.get("model_type", "gpt"))
    if model_type not in MODEL_CONFIGS:
        raise ConfigError(f"model_type must be one of {', '.join(MODEL_CONFIGS)}, got {model_type!r}.")
    cfg, model_cfg = build(values, TrainConfig, MODEL_CONFIGS[model_type])
    ckpt = None
    if cfg.init_from == "resume":
        ckpt = load_checkpoint(cfg.out_dir)
        # the stored run's settings, then whatever this command line sets explicitly (e.g. a longer max_iters)
        saved = {**ckpt["train_config"], **{k: v for k, v in values.items() if k in ckpt["train_config"]}}
        cfg = build(saved, TrainConfig)[0]
        model_cfg = from_dict(MODEL_CONFIGS[ckpt["model_type"]], ckpt["model_args"])
    elif cfg.init_from != "scratch":  # pretrained GPT-2: its sizes, with this command line's dropout/block_size
        fixed = sorted(set(values) & set(field_types(type(model_cfg))) - {"dropout", "block_size"})
        if fixed or cfg.model_type != "gpt":
            raise ConfigError(f"init_from={cfg.init_from} fixes the model (a GPT-2); remove "
                              f"{fixed[0] if fixed else 'model_type'} (only dropout and block_size may be set).")
        model_cfg = pretrained_config(cfg.init_from, model_cfg.dropout,
                                      model_cfg.block_size if "block_size" in values else None)
    return cfg, model_cfg, ckpt


def main(argv: list[str]) -> None:
    # ---------------------------------------------------------------- configuration
    cfg, model_cfg, ckpt = load_config(argv)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    device_type = "cuda" if device.startswith("cuda") else device
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    if ckpt is None and os.path.exists(ckpt_path) and not cfg.overwrite and not cfg.eval_only:
        raise ConfigError(f"{ckpt_path} already exists; continue it with --init_from=resume, "
                          "pick another --out_dir, or pass --overwrite=True to replace it.")
    torch.manual_seed(cfg.seed)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = autocast_for(device, dtype)

    # ---------------------------------------------------------------- data
    folder = dataset_dir(cfg.dataset, cfg.data_dir)
    batch_maker = BATCHES[cfg.model_type]
    tokenizer = from_meta(read_meta(folder, prepare_if_missing=True)).with_specials(batch_maker.specials)
    if cfg.init_from not in ("scratch", "resume") and tokenizer.vocab_size != model_cfg.vocab_size:
        raise ConfigError(f"dataset {cfg.dataset} is tokenized with {tokenizer.kind} ({tokenizer.vocab_size} ids), not "
                          f"GPT-2 BPE; fine-tune GPT-2 on a GPT-2 BPE dataset (python data/shakespeare/prepare.py).")
    if ckpt is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
    elif tokenizer.vocab_size != model_cfg.vocab_size:
        raise ConfigError(f"the checkpoint's vocabulary ({model_cfg.vocab_size}) differs from dataset "
                          f"{cfg.dataset} ({tokenizer.vocab_size}); resume on the dataset it was trained on.")
    batches = batch_maker(folder, model_cfg, cfg.batch_size, device, tokenizer)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    tokens_per_iter = cfg.batch_size * model_cfg.block_size * cfg.gradient_accumulation_steps

    # ---------------------------------------------------------------- model and optimizer
    if cfg.init_from in ("scratch", "resume"):
        model = MODELS[cfg.model_type](model_cfg).to(device)
    else:
        model = MODELS[cfg.model_type].from_pretrained(cfg.init_from, model_cfg.dropout, model_cfg.block_size).to(device)
        print(f"initialised from {cfg.init_from}")
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
    iter_num, best_val_loss, elapsed_before, wandb_id = 0, float("inf"), 0.0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        elapsed_before, wandb_id = ckpt.get("elapsed_s", 0.0), ckpt.get("wandb_id")
        torch.set_rng_state(ckpt["rng"]["torch"])
        data_gen.set_state(ckpt["rng"]["data"])
        if device_type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        print(f"resuming from {ckpt_path} at iter {iter_num}")
    del ckpt
    print(f"{cfg.model_type}: {model.num_params() / 1e6:.2f}M parameters, device {device}, dtype {dtype}, "
          f"{tokens_per_iter:,} tokens per iteration")
    train_model = torch.compile(model) if cfg.compile else model

    os.makedirs(cfg.out_dir, exist_ok=True)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    start_iter = iter_num
    if not cfg.eval_only:
        keep_metrics(metrics_path, iter_num if start_iter > 0 else -1)
    if cfg.wandb_log:
        import wandb

        run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, id=wandb_id, resume="allow",
                         config={**to_dict(cfg), **to_dict(model_cfg)})
        wandb_id = run.id

    # ---------------------------------------------------------------- training loop
    t_start = time.perf_counter()
    window_start, window_iters, tokens_per_s, loss_value = time.perf_counter(), 0, 0.0, float("nan")
    while True:
        lr = lr_at(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if (iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters or cfg.eval_only) and not (
                iter_num == start_iter and start_iter > 0 and not cfg.eval_only):
            losses = estimate_loss(train_model, batches, cfg, autocast)
            elapsed = elapsed_before + time.perf_counter() - t_start
            extra = "".join(f", {k[4:]} {v:.4f}" for k, v in losses.items() if k.startswith("val_") and k != "val_loss")
            print(f"step {iter_num}: train loss {losses['train_loss']:.4f}, val loss {losses['val_loss']:.4f}{extra}")
            record = {"iter": iter_num, **losses, "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
                      "elapsed_s": round(elapsed, 2), "tokens": iter_num * tokens_per_iter}
            if cfg.eval_only:
                break
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if cfg.wandb_log:
                wandb.log(record, step=iter_num)
            if iter_num > 0 and (losses["val_loss"] < best_val_loss or cfg.always_save_checkpoint):
                best_val_loss = min(best_val_loss, losses["val_loss"])
                rng = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
                if device_type == "cuda":
                    rng["cuda"] = torch.cuda.get_rng_state()
                save_checkpoint({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "model_type": cfg.model_type, "model_args": to_dict(model_cfg), "train_config": to_dict(cfg),
                    "tokenizer": tokenizer.meta(), "iter_num": iter_num, "best_val_loss": best_val_loss, "rng": rng,
                    "elapsed_s": elapsed, "wandb_id": wandb_id}, ckpt_path)
            window_start, window_iters = time.perf_counter(), 0  # evaluation time is not training time
        if cfg.attn_stats_interval and iter_num % cfg.attn_stats_interval == 0 and not cfg.eval_only:
            from model.viz import log_attention  # matplotlib and wandb only when asked for

            t_attn = time.perf_counter()
            log_attention(model, batches.get("val", torch.Generator().manual_seed(cfg.seed + 2)), tokenizer,
                          iter_num, cfg.wandb_log)
            window_start += time.perf_counter() - t_attn  # not training time
        if iter_num >= cfg.max_iters:
            break

        loss_sum = 0.0
        for _ in range(cfg.gradient_accumulation_steps):
            batch = batches.get("train", data_gen)
            with autocast:
                _, loss = train_model(**batch)
            loss = loss / cfg.gradient_accumulation_steps
            scaler.scale(loss).backward()
            loss_sum = loss_sum + loss.detach()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        window_iters += 1

        if iter_num % cfg.log_interval == 0:
            loss_value = loss_sum.item()  # waits for the device: timing below is real
            dt = (time.perf_counter() - window_start) / window_iters
            tokens_per_s = tokens_per_iter / dt
            print(f"iter {iter_num}: loss {loss_value:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                  f"{tokens_per_s / 1000:.1f}k tokens/s", flush=True)
            if cfg.wandb_log:
                wandb.log({"train/loss": loss_value, "lr": lr, "tokens_per_s": tokens_per_s}, step=iter_num)
            window_start, window_iters = time.perf_counter(), 0
    if cfg.wandb_log:
        wandb.finish()


def keep_metrics(path: str, upto_iter: int) -> None:
    """Start metrics.jsonl afresh (upto_iter < 0) or keep only its lines up to a resumed iteration."""
    lines = []
    if upto_iter >= 0 and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line).get("iter", 0) <= upto_iter:
                        lines.append(line)
                except (json.JSONDecodeError, AttributeError):
                    pass  # a line cut by a crash
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted; the last checkpoint in out_dir is intact (continue with --init_from=resume).")
