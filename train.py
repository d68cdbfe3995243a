"""Train a headscope model.

    python train.py                                    # char-level GPT on the built-in Shakespeare (CPU: ~3 min)
    python train.py config/shakespeare_char_cpu.py     # nanoGPT's documented CPU settings
    python train.py config/shakespeare_char.py --device=cuda --compile=True
    python train.py --out_dir=out --init_from=resume   # continue exactly where a run stopped
    torchrun --standalone --nproc_per_node=8 train.py config/NAME.py [--fsdp=True]   # data-parallel
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

from data.loader import BATCHES, batch_generator, dataset_dir, read_meta
from data.tokenizer import TokenizerError, from_meta
from data.tokens import TokenFileError
from model import MODELS, CheckpointError, ConfigError, TrainConfig, load_checkpoint, save_checkpoint
from model import distributed
from model.config import MODEL_CONFIGS, build, check_family_keys, coerce, field_types, from_dict, parse_args, to_dict
from model.mfu import device_peak, flops_per_token, mfu
from model.muon import make_muon_adamw
from model.pretrained import pretrained_config
from model.system import autocast as autocast_for, enable_tf32, pick_device, pick_dtype


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite for max_nonfinite_steps steps in a row."""


USER_ERRORS = (ConfigError, CheckpointError, TokenFileError, TokenizerError, FileNotFoundError, TrainingDiverged)


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


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: str):
    """AdamW with weight decay on matrices and embeddings only (not on biases and norm gains);
    with optimizer='muon', Muon for the blocks' matrices and AdamW for the rest (model/muon.py)."""
    fused = device.startswith("cuda") or device == "cpu"  # one kernel for the whole update (CPU too since torch 2.4)
    if cfg.optimizer == "muon":
        return make_muon_adamw(model, cfg.muon_lr, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.weight_decay,
                               cfg.muon_momentum, cfg.muon_weight_decay, fused=fused)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


@torch.no_grad()
def estimate_loss(model, batches, cfg: TrainConfig, autocast, ranks) -> dict:
    """Mean loss (and the batch maker's own metrics) over eval_iters batches of each split.

    The same batches at every evaluation, each from a generator of its own (training's random state
    is untouched). The ranks share the batches and sum their results; every rank runs the same
    number of forward passes (FSDP gathers weights in each), padding ones counting zero.
    """
    model.eval()
    out = {}
    per_rank = -(-cfg.eval_iters // ranks.world_size)
    for split in ("train", "val"):
        sums = {}
        for i in range(ranks.rank, per_rank * ranks.world_size, ranks.world_size):
            batch = batches.get(split, batch_generator(cfg.seed, "eval", split, i))
            with autocast:
                logits, loss = model(**batch)
            values = {"loss": loss.item()}
            if hasattr(batches, "eval_metrics"):
                values.update(batches.eval_metrics(logits, batch))
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + (value if i < cfg.eval_iters else 0.0)
        sums = distributed.all_reduce_sums(sums, ranks)
        out.update({f"{split}_{name}": total / cfg.eval_iters for name, total in sums.items()})
    if hasattr(batches, "evaluate"):  # metrics that need more than one forward pass (e.g. decoding)
        with autocast:
            out.update(batches.evaluate(model))
    model.train()
    return out


def load_config(argv: list[str]):
    """Build (TrainConfig, model config, checkpoint or None) from the command line."""
    values = parse_args(argv)
    model_type = str(values.get("model_type", "gpt"))
    if model_type not in MODEL_CONFIGS:
        raise ConfigError(f"model_type must be one of {', '.join(MODEL_CONFIGS)}, got {model_type!r}.")
    check_family_keys(values, model_type)  # e.g. --cell (an RNN's) on a Transformer: an error, not ignored
    cfg, model_cfg = build(values, TrainConfig, MODEL_CONFIGS[model_type])
    ckpt = None
    if cfg.init_from == "resume":
        ckpt = load_checkpoint(cfg.out_dir)
        # the stored run's settings, then whatever this command line sets explicitly (e.g. a longer max_iters)
        train_keys = field_types(TrainConfig)  # a key stored by an older headscope, or new since, is no error
        saved = {k: v for k, v in {**ckpt["train_config"], **values}.items() if k in train_keys}
        cfg = build(saved, TrainConfig)[0]
        if cfg.optimizer != ckpt["train_config"].get("optimizer", "adamw"):
            raise ConfigError(f"{cfg.out_dir} was trained with optimizer={ckpt['train_config'].get('optimizer', 'adamw')}; "
                              "resume it with that optimizer, or start a new run in another out_dir.")
        if cfg.model_type != ckpt["model_type"]:
            raise ConfigError(f"{cfg.out_dir} holds a {ckpt['model_type']} model; resume it with that model_type, "
                              "or start a new run in another out_dir.")
        model_cfg = from_dict(MODEL_CONFIGS[ckpt["model_type"]], ckpt["model_args"])
        types = field_types(type(model_cfg))
        if "dropout" in values:  # a training setting, not part of the weights (nanoGPT also takes it on resume)
            model_cfg = dataclasses.replace(model_cfg, dropout=coerce("dropout", values["dropout"], types["dropout"]))
        for key in sorted(set(values) & set(types)):  # the model is the checkpoint's: a different size is a mistake
            if coerce(key, values[key], types[key]) != getattr(model_cfg, key):
                raise ConfigError(f"{cfg.out_dir} holds a model with {key}={getattr(model_cfg, key)!r}; a resumed run "
                                  f"keeps its model: drop --{key}, or start a new run in another out_dir.")
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
    world_size = distributed.world_size()
    if cfg.gradient_accumulation_steps % world_size:
        raise ConfigError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) counts micro-batches "
                          f"over all {world_size} processes; make it a multiple of {world_size}.")
    ranks = distributed.setup(pick_device(cfg.device))  # one process, or one of torchrun's
    device, master = ranks.device, ranks.master
    dtype = pick_dtype(cfg.dtype, device)
    device_type = "cuda" if device.startswith("cuda") else device
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    if ckpt is None and os.path.exists(ckpt_path) and not cfg.overwrite and not cfg.eval_only:
        raise ConfigError(f"{ckpt_path} already exists; continue it with --init_from=resume, "
                          "pick another --out_dir, or pass --overwrite=True to replace it.")
    micro_steps = cfg.gradient_accumulation_steps // ranks.world_size  # on this rank
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if device_type == "cuda":
        enable_tf32()
    autocast = autocast_for(device, dtype)

    # ---------------------------------------------------------------- data
    folder = dataset_dir(cfg.dataset, cfg.data_dir)
    batch_maker = BATCHES[cfg.model_type]
    if master:
        read_meta(folder, prepare_if_missing=True)  # one rank prepares the dataset on first use
    distributed.barrier(ranks)
    tokenizer = from_meta(read_meta(folder)).with_specials(batch_maker.specials)
    if cfg.init_from not in ("scratch", "resume") and tokenizer.vocab_size != model_cfg.vocab_size:
        raise ConfigError(f"{cfg.init_from} has {model_cfg.vocab_size} token ids but dataset {folder} is tokenized "
                          f"with {tokenizer.kind} ({tokenizer.vocab_size} ids); fine-tune GPT-2 on a GPT-2 BPE dataset "
                          "(python data/shakespeare/prepare.py).")
    if ckpt is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
    elif tokenizer.vocab_size != model_cfg.vocab_size or tokenizer.meta() != ckpt.get("tokenizer", tokenizer.meta()):
        theirs = tokenizer.vocab_size if tokenizer.vocab_size != model_cfg.vocab_size else "as many, other tokens"
        raise ConfigError(f"the checkpoint's vocabulary ({model_cfg.vocab_size}) differs from dataset "
                          f"{cfg.dataset} ({theirs}); resume on the dataset it was trained on.")
    batches = batch_maker(folder, model_cfg, cfg.batch_size, device, tokenizer)
    tokens_per_iter = cfg.batch_size * model_cfg.block_size * cfg.gradient_accumulation_steps  # all ranks

    # ---------------------------------------------------------------- model and optimizer
    if cfg.init_from in ("scratch", "resume"):
        model = MODELS[cfg.model_type](model_cfg).to(device)
    else:
        model = MODELS[cfg.model_type].from_pretrained(cfg.init_from, model_cfg.dropout, model_cfg.block_size).to(device)
        if master:
            print(f"initialised from {cfg.init_from}")
    if master:
        print(f"{cfg.model_type}: {model.num_params() / 1e6:.2f}M parameters, device {device}, dtype {dtype}, "
              f"{tokens_per_iter:,} tokens per iteration, {ranks.world_size} process(es)"
              + (", FSDP" if cfg.fsdp else ", DDP" if ranks.launched else ""))
    token_flops = flops_per_token(model, model_cfg.block_size)
    peak, gpu_name = device_peak(device)
    if master and device_type == "cuda" and peak is None:
        print(f"MFU unknown for {gpu_name} (not in model/mfu.py's table of peak FLOP/s)")
    train_model = distributed.wrap(model, ranks, cfg.fsdp, cfg.compile, dtype)  # DDP, FSDP or model itself
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
    torch.manual_seed(cfg.seed + ranks.rank)  # dropout differs between ranks
    iter_num, best_val_loss, elapsed_before, wandb_id = 0, float("inf"), 0.0, None
    if ckpt is not None:
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            distributed.load_full_state(model, optimizer, ckpt["model"], ckpt["optimizer"])
        except (RuntimeError, KeyError, ValueError):
            raise CheckpointError(f"{ckpt_path} does not match this model and optimizer; it is damaged "
                                  "or from an older headscope.") from None
        for group, own in zip(optimizer.param_groups, settings):  # this run's settings (e.g. a new --muon_lr)
            group.update(own)
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        elapsed_before, wandb_id = ckpt.get("elapsed_s", 0.0), ckpt.get("wandb_id")
        exact = distributed.restore_rng(ckpt["rng"], ranks)
        if master:
            print(f"resuming from {ckpt_path} at iter {iter_num}" + ("" if exact else
                  " (saved by another number of processes: same data, new dropout randomness)"))
    del ckpt

    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    start_iter = iter_num
    if master and not cfg.eval_only:
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
            keep_metrics(metrics_path, iter_num if start_iter > 0 else -1)
        except OSError as e:
            raise ConfigError(f"cannot write to out_dir {cfg.out_dir!r} ({e.strerror}); pick a writable --out_dir.")
    if cfg.wandb_log and master:
        import wandb

        run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, id=wandb_id, resume="allow",
                         config={**to_dict(cfg), **to_dict(model_cfg)},
                         dir=os.environ.get("WANDB_DIR") or cfg.out_dir)  # not the current folder
        wandb_id = run.id

    # ---------------------------------------------------------------- training loop
    t_start = time.perf_counter()
    window_start, window_iters, tokens_per_s, loss_value = time.perf_counter(), 0, 0.0, float("nan")
    nonfinite_in_a_row = 0
    while True:
        lr = lr_at(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups have their own peak rate

        if (iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters or cfg.eval_only) and not (
                iter_num == start_iter and start_iter > 0 and not cfg.eval_only):
            losses = estimate_loss(model, batches, cfg, autocast, ranks)  # every rank takes part
            elapsed = elapsed_before + time.perf_counter() - t_start
            extra = "".join(f", {k[4:]} {v:.4f}" for k, v in losses.items() if k.startswith("val_") and k != "val_loss")
            if master:
                print(f"step {iter_num}: train loss {losses['train_loss']:.4f}, val loss {losses['val_loss']:.4f}{extra}")
            record = {"iter": iter_num, **losses, "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
                      "elapsed_s": round(elapsed, 2), "tokens": iter_num * tokens_per_iter}
            if cfg.eval_only:
                break
            if master:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if cfg.wandb_log:
                    wandb.log(record, step=iter_num)
            good = math.isfinite(losses["val_loss"])  # never replace a good checkpoint with a broken model
            if iter_num > 0 and good and (losses["val_loss"] < best_val_loss or cfg.always_save_checkpoint):
                best_val_loss = min(best_val_loss, losses["val_loss"])
                model_state, optim_state = distributed.full_state(model, optimizer)  # collective
                rng = distributed.rng_states(ranks)  # collective
                if master:
                    save_checkpoint({
                        "model": model_state, "optimizer": optim_state,
                        "model_type": cfg.model_type, "model_args": to_dict(model_cfg), "train_config": to_dict(cfg),
                        "tokenizer": tokenizer.meta(), "iter_num": iter_num, "best_val_loss": best_val_loss,
                        "rng": rng, "elapsed_s": elapsed, "wandb_id": wandb_id}, ckpt_path)
            window_start, window_iters = time.perf_counter(), 0  # evaluation time is not training time
        if cfg.attn_stats_interval and iter_num % cfg.attn_stats_interval == 0 and not cfg.eval_only \
                and master and not cfg.fsdp:  # rank 0 alone; a sharded model would need every rank's forward
            from model.viz import log_attention  # matplotlib and wandb only when asked for

            t_attn = time.perf_counter()
            log_attention(model, batches.get("val", torch.Generator().manual_seed(cfg.seed + 2)), tokenizer,
                          iter_num, cfg.wandb_log)
            window_start += time.perf_counter() - t_attn  # not training time
        if iter_num >= cfg.max_iters:
            break

        # micro-batch j of the global batch is drawn from its own generator: rank r takes j = r, r + N, ...
        loss_sum = torch.zeros((), device=device)
        for micro in range(micro_steps):
            j = micro * ranks.world_size + ranks.rank
            batch = batches.get("train", batch_generator(cfg.seed, "train", iter_num, j))
            with distributed.grad_sync(train_model, sync=micro == micro_steps - 1):  # all-reduce on the last only
                with autocast:
                    _, loss = train_model(**batch)
                loss = loss / micro_steps  # DDP/FSDP average over ranks: the mean over the global batch
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        loss_value = distributed.mean_over_ranks(loss_sum, ranks).item()  # the same on every rank
        grad_norm = 0.0
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = distributed.scalar(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        finite = math.isfinite(loss_value) and (math.isfinite(grad_norm) or scaler.is_enabled())
        if finite or scaler.is_enabled():  # with float16 the scaler itself skips non-finite gradients
            scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        window_iters += 1
        nonfinite_in_a_row = 0 if finite else nonfinite_in_a_row + 1
        if not finite:
            if master:
                print(f"iter {iter_num}: non-finite loss {loss_value} (gradient norm {grad_norm}); step skipped, "
                      f"{nonfinite_in_a_row} in a row", flush=True)
                if cfg.wandb_log:
                    wandb.log({"nonfinite_steps": nonfinite_in_a_row}, step=iter_num)
            if nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                kept = (f"the last good checkpoint {ckpt_path} is intact: resume it" if os.path.exists(ckpt_path)
                        else "no checkpoint was saved: start again")
                raise TrainingDiverged(f"the loss was non-finite for {nonfinite_in_a_row} steps in a row (iter "
                                       f"{iter_num}); {kept} with a lower --learning_rate or --grad_clip, or raise "
                                       "--max_nonfinite_steps.")

        if iter_num % cfg.log_interval == 0 and master:
            dt = (time.perf_counter() - window_start) / window_iters
            tokens_per_s = tokens_per_iter / dt
            utilisation = f", MFU {100 * mfu(tokens_per_s, token_flops, peak, ranks.world_size):.1f}%" if peak else ""
            print(f"iter {iter_num}: loss {loss_value:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                  f"{tokens_per_s / 1000:.1f}k tokens/s{utilisation}", flush=True)
            if cfg.wandb_log:
                wandb.log({"train/loss": loss_value, "lr": lr, "tokens_per_s": tokens_per_s}, step=iter_num)
            window_start, window_iters = time.perf_counter(), 0
    if cfg.wandb_log and master:
        wandb.finish()


def keep_metrics(path: str, upto_iter: int) -> None:
    """Start metrics.jsonl afresh (upto_iter < 0) or keep only its lines up to a resumed iteration."""
    lines = []
    if upto_iter >= 0 and os.path.exists(path):
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    if json.loads(line).get("iter", 0) <= upto_iter:
                        lines.append(line.rstrip("\n") + "\n")  # the next record starts a line of its own
                except (json.JSONDecodeError, AttributeError, TypeError):
                    pass  # a line cut by a crash
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, path)


if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, rank N > 0 tags its messages
    tag = f"[rank {rank}] " if rank else ""
    try:
        main(sys.argv[1:])
    except USER_ERRORS as e:
        sys.exit(f"{tag}error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"{tag}interrupted; the last checkpoint in out_dir is intact (continue with --init_from=resume).")
    finally:
        distributed.teardown()
