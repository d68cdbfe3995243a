"""Train a headscope model.

    python train.py                                    # char-level GPT on the built-in Shakespeare (CPU: minutes)
    python train.py config/shakespeare_char_cpu.py     # nanoGPT's documented CPU settings
    python train.py config/shakespeare_char.py --device=cuda --compile=True
    python train.py --out_dir=out --init_from=resume   # continue exactly where a run stopped
    torchrun --standalone --nproc_per_node=8 train.py config/NAME.py [--fsdp=True]   # data-parallel (see README)
    python train.py config/finetune_shakespeare.py     # fine-tune OpenAI's GPT-2 on BPE Shakespeare
    python train.py --out_dir=out --init_from=resume --eval_only   # val loss of a checkpoint

A config file holds `name = value` lines; --key=value overrides it. An unknown key or a value of the
wrong type is an error that lists the valid keys.
"""

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace

import torch

from data.loader import batch_generator, dataset_dir, encode_text_file, read_meta
from data.tokenizer import from_meta
from lens.training_probe import probe
from model import GPT
from model.hard_attention import check_options_apply
from model.layers import copies_per_sequence
from training import distributed
from training.config import (TrainConfig, build, check_init_from, coerce, field_types, from_dict, parse_args, to_dict,
                             usage, wants_help)
from training.families import FAMILIES, family, refuse_ignored
from training.interrupt import GracefulStop, Interrupted
from training.logger import RunLogger, log_attention
from training.mfu import device_peak, flops_per_token, mfu
from training.muon import make_muon_adamw
from training.outdir import lock_out_dir, release
from training.system import autocast as autocast_for, enable_tf32, pick_device, pick_dtype
from weights.checkpoint import RESUME_KEYS, CheckpointError, copy_checkpoint, load_checkpoint, save_checkpoint
from weights.common import IGNORE_INDEX, ConfigError, UserError


class TrainingDiverged(UserError, RuntimeError):
    """The loss stayed non-finite for max_nonfinite_steps steps in a row."""


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters; with lr_schedule='wsd'
    (warmup-stable-decay) learning_rate until the last cooldown_frac of lr_decay_iters, then linear to min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        cooldown_start = max(cfg.warmup_iters, cfg.lr_decay_iters - cfg.cooldown_frac * cfg.lr_decay_iters)
        progress = max(0.0, it - cooldown_start) / max(1.0, cfg.lr_decay_iters - cooldown_start)
        return cfg.learning_rate + progress * (cfg.min_lr - cfg.learning_rate)
    progress = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: str):
    """AdamW with weight decay on matrices and embeddings only (not on biases and norm gains);
    with optimizer='muon', Muon for the blocks' matrices and AdamW for the rest (training/muon.py)."""
    fused = device.startswith("cuda") or device == "cpu"  # one kernel for the whole update (CPU too since torch 2.4)
    if cfg.optimizer == "muon":
        return make_muon_adamw(model, cfg.muon_lr, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.weight_decay,
                               cfg.muon_momentum, cfg.muon_weight_decay, fused=fused, method=cfg.muon_method,
                               bf16=cfg.muon_bf16, normuon=cfg.normuon)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


@torch.no_grad()
def estimate_loss(model, batches, cfg: TrainConfig, autocast, ranks, texts: tuple[str, ...] = ()) -> dict:
    """Loss, perplexity, bits per character/byte (a GPT) and the batch maker's own metrics of each split.

    eval_iters batches of train and val: the same batches at every evaluation, each from a generator of
    its own (training's random state is untouched), the loss their mean. eval_iters='all': every window of
    val instead (LMBatches.every_window), the loss the mean over all its tokens. `texts` (e.g. a held-out
    file added to the batch maker) are always evaluated whole. The ranks share the batches and sum their
    results; every rank runs the same number of forward passes (FSDP gathers weights in each).
    """
    model.eval()
    whole = {split: batches.every_window(split) for split in texts}
    if cfg.eval_iters == "all":
        whole = {"val": batches.every_window("val"), **whole}
    drawn = {} if cfg.eval_iters == "all" else {
        split: [lambda split=split, i=i: batches.get(split, batch_generator(cfg.seed, "eval", split, i))
                for i in range(cfg.eval_iters)] for split in ("train", "val")}
    out = {}
    for split, makers in {**drawn, **whole}.items():
        sums = split_sums(model, batches, makers, autocast, ranks)
        out.update(split_metrics(split, sums, split in whole, getattr(batches, "unit", "token")))
    if hasattr(batches, "evaluate"):  # metrics that need more than one forward pass (e.g. decoding)
        with autocast:
            out.update(batches.evaluate(model))
    model.train()
    return out


def split_sums(model, batches, makers: list, autocast, ranks) -> dict:
    """Sums over the batches that `makers` make (rank r takes r, r + N, ...; padding passes count zero)."""
    sums = {}
    per_rank = -(-len(makers) // ranks.world_size)
    for i in range(ranks.rank, per_rank * ranks.world_size, ranks.world_size):
        batch = makers[min(i, len(makers) - 1)]()
        with autocast:
            logits, loss = model(**batch)
        values = {"batches": 1, "loss": loss.item()}
        if hasattr(batches, "units"):  # next-token prediction: nats over the scored targets, and their text
            tokens = int((batch["targets"] != IGNORE_INDEX).sum())
            values.update(nats=loss.item() * tokens, tokens=tokens, units=batches.units(batch))
        if hasattr(batches, "eval_metrics"):
            values.update(batches.eval_metrics(logits, batch))
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + (value if i < len(makers) else 0.0)
    return distributed.all_reduce_sums(sums, ranks)


def split_metrics(split: str, sums: dict, whole: bool, unit: str) -> dict:
    """{split}_loss (the mean over batches, or over tokens when whole), _ppl, _bpc or _bpb, _tokens (whole)."""
    n = sums.pop("batches")
    loss = sums["nats"] / sums["tokens"] if whole else sums["loss"] / n
    out = {f"{split}_loss": loss, f"{split}_ppl": math.exp(loss) if loss < 700 else float("inf")}
    if "units" in sums:  # bits per character (char tokenizer) or per UTF-8 byte (GPT-2 BPE)
        out[f"{split}_bp{unit[0]}"] = sums["nats"] / math.log(2) / sums["units"]
    if whole:
        out[f"{split}_tokens"] = int(sums["tokens"])
    out.update({f"{split}_{k}": v / n for k, v in sums.items() if k not in ("loss", "nats", "tokens", "units")})
    return out


def read_config(argv: list[str]):
    """(raw values, TrainConfig, model config) of the command line, before any checkpoint is read."""
    values = parse_args(argv)
    model_type = str(values.get("model_type", "gpt"))
    refuse_ignored(values, model_type, TrainConfig)  # e.g. --cell (an RNN's) on a Transformer: an error, not ignored
    if "vocab_size" in values:  # it was replaced by the dataset's without a word
        raise ConfigError("vocab_size comes from the dataset's meta.json (or the checkpoint); headscope does not pad "
                          "the vocabulary as nanoGPT's 50304 does: drop --vocab_size.")
    cfg, model_cfg = build(values, TrainConfig, family(model_type).config)
    check_init_from(cfg.init_from, ("scratch", "resume"))  # reads the disk: before out_dir is locked or made
    if hasattr(model_cfg, "attn_weighting"):
        check_options_apply(model_cfg)  # e.g. a hard_attention_* option with no hard attention
    return values, cfg, model_cfg


def lock_run_dir(cfg: TrainConfig) -> tuple:
    """(lock, error): rank 0's lock on out_dir for the run's life (training/outdir.py), None on other ranks; or
    the UserError that stops the run, raised by setup_system once every rank can stop with it. An evaluation
    locks an out_dir that exists (so it never reads a running run's files) and writes nothing there."""
    if os.environ.get("RANK", "0") != "0":
        return None, None
    try:
        return lock_out_dir(cfg.out_dir, create=not cfg.eval_only), None
    except UserError as e:
        return None, e


def load_config(argv: list[str], parsed: tuple | None = None):
    """Build (TrainConfig, model config, checkpoint or None) from the command line (read_config's result)."""
    values, cfg, model_cfg = parsed or read_config(argv)
    given, ckpt = cfg.gradient_accumulation_steps, None  # None: not set by this command line or config file
    if cfg.init_from == "resume":
        ckpt = load_checkpoint(cfg.out_dir, needs=RESUME_KEYS)
        # the stored run's settings, then whatever this command line sets explicitly (e.g. a longer max_iters)
        train_keys = field_types(TrainConfig)  # a key stored by an older headscope, or new since, is no error
        saved = {k: v for k, v in {**ckpt["train_config"], **values}.items() if k in train_keys}
        if saved.get("fsdp") and "fsdp" not in values and distributed.world_size() == 1:
            saved["fsdp"] = False  # an FSDP run resumed on one process: nothing to shard (the checkpoint is whole)
        cfg = build(saved, TrainConfig)[0]
        if cfg.optimizer != ckpt["train_config"].get("optimizer", "adamw"):
            raise ConfigError(f"{cfg.out_dir} was trained with optimizer={ckpt['train_config'].get('optimizer', 'adamw')}; "
                              "resume it with that optimizer, or start a new run in another out_dir.")
        if cfg.model_type != ckpt["model_type"]:
            raise ConfigError(f"{cfg.out_dir} holds a {ckpt['model_type']} model; resume it with that model_type, "
                              "or start a new run in another out_dir.")
        refuse_ignored(values, cfg.model_type, TrainConfig)  # the checkpoint's family, when --model_type was not given
        model_cfg = from_dict(family(ckpt["model_type"]).config, ckpt["model_args"])
        types = field_types(type(model_cfg))
        if "dropout" in values:  # a training setting, not part of the weights (nanoGPT also takes it on resume)
            model_cfg = replace(model_cfg, dropout=coerce("dropout", values["dropout"], types["dropout"]))
        held = to_dict(model_cfg)  # flat keys, as given on the command line (hard_attention_estimator)
        for key in sorted(set(values) & set(types)):  # the model is the checkpoint's: a different size is a mistake
            if coerce(key, values[key], types[key]) != held[key]:
                raise ConfigError(f"{cfg.out_dir} holds a model with {key}={held[key]!r}; a resumed run "
                                  f"keeps its model: drop --{key}, or start a new run in another out_dir.")
    elif cfg.init_from != "scratch":  # pretrained GPT-2: its sizes, with this command line's dropout/block_size
        fixed = sorted(set(values) & set(field_types(type(model_cfg))) - {"dropout", "block_size"})
        if fixed or cfg.model_type != "gpt":
            raise ConfigError(f"init_from={cfg.init_from} fixes the model (a GPT-2); remove "
                              f"{fixed[0] if fixed else 'model_type'} (only dropout and block_size may be set).")
        model_cfg = GPT.pretrained_config(cfg.init_from, model_cfg.dropout,
                                      model_cfg.block_size if "block_size" in values else None)
    return replace(cfg, gradient_accumulation_steps=accumulation(cfg, given, ckpt is not None)), model_cfg, ckpt


def accumulation(cfg: TrainConfig, given: int | None, resumed: bool) -> int:
    """The run's global micro-batches per step: `given` by the command line or config file; None (not given)
    takes a resumed run's stored count (cfg's), else one micro-batch per process (training/distributed.py)."""
    stored = cfg.gradient_accumulation_steps if resumed and given is None else None  # the effective count it ran with
    if stored is not None and cfg.eval_only and stored % distributed.world_size():
        stored = None  # an evaluation trains nothing: any number of processes may share it
    return distributed.accumulation_steps(given if given is not None else stored, distributed.world_size(),
                                          resumed=stored is not None)


@dataclass
class Run:
    """What a training run holds besides the model: settings, data, counters (saved in the checkpoint)."""

    cfg: TrainConfig
    model_cfg: object
    ranks: distributed.Ranks
    dtype: str
    autocast: object
    tokenizer: object
    batches: object
    log: RunLogger
    iter_num: int = 0
    start_iter: int = 0
    best_val_loss: float = float("inf")
    elapsed_before: float = 0.0  # training seconds of the runs this one resumes
    train_seconds: float = 0.0  # in training steps only (no evaluation, no saving), resumed runs included
    wandb_id: str | None = None
    nonfinite_in_a_row: int = 0
    evaluated: bool = True  # whether iter_num's evaluation is done (False in a checkpoint saved on a signal)
    tokens: int = 0  # real tokens trained on, over all ranks (padding not counted), up to the last count
    tokens_at_start: int = 0  # of the checkpoint this run resumed
    tokens_pending: object = 0  # this rank's tokens since that count (a tensor: no device sync per step)
    saved: tuple | None = None  # (iteration, inode) of the ckpt.pt this run saved or resumed, else None
    saving: int | None = None  # the iteration being saved right now
    last_val_loss: float = float("nan")
    started: float = field(default_factory=time.perf_counter)  # when the loop started (ETA, summary)

    @property
    def ckpt_path(self) -> str:
        """out_dir/ckpt.pt."""
        return os.path.join(self.cfg.out_dir, "ckpt.pt")

    @property
    def best_path(self) -> str:
        """out_dir/best.pt (--keep_best=True)."""
        return os.path.join(self.cfg.out_dir, "best.pt")

    @property
    def tokens_per_iter(self) -> int:
        """Positions in one optimizer step, over all ranks (padding included: the nominal batch)."""
        return self.cfg.batch_size * self.model_cfg.block_size * self.cfg.gradient_accumulation_steps

    def count_tokens(self) -> int:
        """Add up every rank's tokens since the last count (collective); return the run's total."""
        pending = {"tokens": float(self.tokens_pending)}
        self.tokens += int(distributed.all_reduce_sums(pending, self.ranks)["tokens"])
        self.tokens_pending = 0
        return self.tokens


def setup_system(cfg: TrainConfig, ckpt: dict | None, lock_error: Exception | None = None):
    """(ranks, dtype, autocast): the processes (one, or torchrun's), the precision and the seed."""
    ranks = distributed.setup(pick_device(cfg.device))  # one process, or one of torchrun's
    with distributed.stop_together(ranks):  # rank 0 could not lock out_dir: every rank stops with a line
        if lock_error is not None:
            raise lock_error
    dtype = pick_dtype(cfg.dtype, ranks.device)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    if ckpt is None and os.path.exists(ckpt_path) and not cfg.overwrite and not cfg.eval_only:
        raise ConfigError(f"{ckpt_path} already exists; continue it with --init_from=resume, "
                          "pick another --out_dir, or pass --overwrite=True to replace it.")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if ranks.device.startswith("cuda"):
        enable_tf32()
    return ranks, dtype, autocast_for(ranks.device, dtype)


def setup_data(cfg: TrainConfig, model_cfg, ckpt: dict | None, ranks):
    """(tokenizer, batch maker, model config with the dataset's vocabulary); one rank prepares the data."""
    folder = dataset_dir(cfg.dataset, cfg.data_dir)
    batch_maker = family(cfg.model_type).batches
    with distributed.stop_together(ranks):  # the others wait; if rank 0 cannot prepare it, every rank stops
        if ranks.master:
            read_meta(folder, prepare_if_missing=True)  # one rank prepares the dataset on first use
    meta = read_meta(folder)
    if ranks.master:  # which text it is: the built-in plays are not nanoGPT's tiny shakespeare
        print(f"dataset {cfg.dataset if not cfg.data_dir else folder}: {meta.get('source', 'its source is not recorded')}")
    tokenizer = from_meta(meta).with_specials(batch_maker.specials)
    if cfg.init_from not in ("scratch", "resume") and tokenizer.vocab_size != model_cfg.vocab_size:
        raise ConfigError(f"{cfg.init_from} has {model_cfg.vocab_size} token ids but dataset {folder} is tokenized "
                          f"with {tokenizer.kind} ({tokenizer.vocab_size} ids); fine-tune GPT-2 on a GPT-2 BPE dataset "
                          "(python data/shakespeare/prepare.py).")
    if ckpt is None:
        model_cfg = model_cfg.with_vocab_size(tokenizer.vocab_size)
    elif tokenizer.vocab_size != model_cfg.vocab_size or tokenizer.meta() != ckpt.get("tokenizer", tokenizer.meta()):
        theirs = tokenizer.vocab_size if tokenizer.vocab_size != model_cfg.vocab_size else "as many, other tokens"
        raise ConfigError(f"the checkpoint's vocabulary ({model_cfg.vocab_size}) differs from dataset "
                          f"{folder} ({theirs}); resume on the dataset it was trained on.")
    packing = (cfg.packing,) if cfg.packing.needs_separator else ()  # GPT's and BERT's batch makers take it
    batches = batch_maker(folder, model_cfg, cfg.batch_size, ranks.device, tokenizer, *packing)
    if (cfg.eval_iters == "all" or cfg.eval_file) and not hasattr(batches, "every_window"):
        raise ConfigError(f"--eval_iters=all and --eval_file evaluate every window of a GPT's text, not "
                          f"{family(cfg.model_type).description}'s batches; give --eval_iters a number.")
    if cfg.eval_file:
        batches.add_text("file", encode_text_file(cfg.eval_file, tokenizer))
    return tokenizer, batches, model_cfg


def build_model(run: Run):
    """(model, train_model, optimizer, scaler): the model, wrapped for DDP/FSDP/compile, and its optimizer."""
    cfg, model_cfg, ranks = run.cfg, run.model_cfg, run.ranks
    model_class = family(cfg.model_type).model
    if cfg.init_from in ("scratch", "resume"):
        model = model_class(model_cfg).to(ranks.device)
    else:
        model = model_class.from_pretrained(cfg.init_from, model_cfg.dropout, model_cfg.block_size).to(ranks.device)
        run.log.print(f"initialised from {cfg.init_from}")
    run.log.print(f"{cfg.model_type}: {model.num_params() / 1e6:.2f}M parameters, device {ranks.device}, dtype "
                  f"{run.dtype}, {run.tokens_per_iter:,} tokens per iteration, {ranks.world_size} process(es)"
                  + (", FSDP" if cfg.fsdp else ", DDP" if ranks.launched else ""))
    if cfg.packing.needs_separator:
        run.log.print(run.batches.describe())  # padding and documents cut at the rows' edges
    run.log.print(distributed.describe_batch(cfg.batch_size, model_cfg.block_size, cfg.gradient_accumulation_steps,
                                             ranks.world_size))
    train_model = distributed.wrap(model, ranks, cfg.fsdp, cfg.compile, run.dtype)  # DDP, FSDP or model itself
    optimizer = make_optimizer(model, cfg, ranks.device)
    device_type = "cuda" if ranks.device.startswith("cuda") else ranks.device
    scaler = torch.amp.GradScaler(device_type, enabled=(run.dtype == "float16"))
    torch.manual_seed(cfg.seed + ranks.rank)  # dropout differs between ranks
    return model, train_model, optimizer, scaler


def resume(run: Run, ckpt: dict, model, optimizer, scaler) -> None:
    """Load a checkpoint's weights, optimizer state, loss scale, counters and random state into the run."""
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    matched = set(model.state_dict()) <= set(ckpt["model"])  # torch's loader keeps a missing weight's fresh init
    try:
        distributed.load_full_state(model, optimizer, ckpt["model"], ckpt["optimizer"])
    except (RuntimeError, KeyError, ValueError):
        matched = False
    if not matched:
        raise CheckpointError(f"{run.ckpt_path} does not match the model and optimizer it describes (damaged, "
                              "or from an older headscope); restore it from a copy or start a new run in another "
                              "out_dir.")
    for group, own in zip(optimizer.param_groups, settings):  # this run's settings (e.g. a new --muon_lr)
        group.update(own)
    if scaler.is_enabled() and ckpt.get("scaler"):  # float16: the loss scale and its growth count
        scaler.load_state_dict(ckpt["scaler"])
    run.iter_num = run.start_iter = ckpt["iter_num"]
    run.best_val_loss = ckpt["best_val_loss"]
    run.evaluated = ckpt.get("evaluated", True)  # older checkpoints were all saved after an evaluation
    run.tokens = ckpt.get("tokens", run.iter_num * run.tokens_per_iter)  # older ones: the nominal count
    run.tokens_at_start, run.saved = run.tokens, (run.iter_num, inode(run.ckpt_path))
    run.elapsed_before, run.wandb_id = ckpt.get("elapsed_s", 0.0), ckpt.get("wandb_id")
    run.train_seconds = ckpt.get("train_s", 0.0)
    exact = distributed.restore_rng(ckpt["rng"], run.ranks)
    run.log.print(f"resuming from {run.ckpt_path} at iter {run.iter_num}" + ("" if exact else
                  " (saved by another number of processes: same data, new dropout randomness)"))
    if run.iter_num >= run.cfg.max_iters and not run.cfg.eval_only:
        run.log.print(f"iter {run.iter_num} already reaches max_iters={run.cfg.max_iters}, so there is nothing to train; "
                      "pass a larger --max_iters to continue.")


def inode(path: str) -> int | None:
    """The file's inode (a checkpoint replaced by a save gets a new one), None if there is none."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def evaluate_and_save(run: Run, model, optimizer, scaler, lr: float, elapsed: float, tokens_per_s: float) -> None:
    """Estimate the losses, record them, and save a checkpoint when the model is finite and good enough."""
    cfg = run.cfg
    losses = estimate_loss(model, run.batches, cfg, run.autocast, run.ranks,  # every rank takes part
                           ("file",) if cfg.eval_file else ())
    record = {"iter": run.iter_num, **losses, "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
              "elapsed_s": round(elapsed, 2), "train_s": round(run.train_seconds, 2), "tokens": run.count_tokens()}
    if cfg.head_probe and run.ranks.master and not cfg.fsdp:  # detector and in-context scores (lens/training_probe.py)
        record.update(probe(model, run.batches.get("val", torch.Generator().manual_seed(cfg.seed + 3)), cfg.seed))
    run.log.evaluation(losses, record, write=not cfg.eval_only)
    run.evaluated, run.last_val_loss = True, losses["val_loss"]
    good = math.isfinite(losses["val_loss"])  # never replace a good checkpoint with a broken model
    best = good and losses["val_loss"] < run.best_val_loss
    if cfg.eval_only or run.iter_num == 0 or not good or not (best or cfg.always_save_checkpoint):
        return
    run.best_val_loss = min(run.best_val_loss, losses["val_loss"])
    save(run, model, optimizer, scaler, elapsed, best)


def save(run: Run, model, optimizer, scaler, elapsed: float, best: bool = False) -> None:
    """Write ckpt.pt (and, with keep_best, best.pt when `best`), and say so; collective."""
    cfg = run.cfg
    model_state, optim_state = distributed.full_state(model, optimizer)  # collective
    rng = distributed.rng_states(run.ranks)  # collective
    tokens = run.count_tokens()  # collective
    with distributed.stop_together(run.ranks):  # rank 0 cannot save (disk full): every rank stops with a line
        if run.ranks.master:
            run.saving = (run.iter_num, inode(run.ckpt_path))
            save_checkpoint({
                "model": model_state, "optimizer": optim_state, "scaler": scaler.state_dict(),
                "model_type": cfg.model_type, "model_args": to_dict(run.model_cfg), "train_config": to_dict(cfg),
                "tokenizer": run.tokenizer.meta(), "iter_num": run.iter_num, "best_val_loss": run.best_val_loss,
                "rng": rng, "elapsed_s": elapsed, "train_s": run.train_seconds, "wandb_id": run.wandb_id,
                "evaluated": run.evaluated,
                "tokens": tokens}, run.ckpt_path)
            run.saved, run.saving = (run.iter_num, inode(run.ckpt_path)), None
            also = ""
            if best and cfg.keep_best:
                copy_checkpoint(run.ckpt_path, run.best_path)
                also = f", also as {run.best_path}"
            what = (f"val loss {run.last_val_loss:.4f}" + (", the best so far" if best else "")) if run.evaluated \
                else "not evaluated"
            run.log.print(f"saved {run.ckpt_path} at iter {run.iter_num} ({what}{also})")


def train_batch(run: Run, model, micro: int) -> dict:
    """This rank's micro-batch `micro` of the iteration: micro-batch j of the global batch is drawn from its own
    generator, and rank r takes j = r, r + N, ... Each sequence comes as many times in a row as an AuxiliaryLoss
    asks (model/layers.py copies_per_sequence: REINFORCE's leave-one-out samples)."""
    j = micro * run.ranks.world_size + run.ranks.rank
    batch = run.batches.get("train", batch_generator(run.cfg.seed, "train", run.iter_num, j))
    copies = copies_per_sequence(model)
    if copies > 1:
        batch = {name: rows.repeat_interleave(copies, 0) for name, rows in batch.items()}
    return batch


def train_step(run: Run, model, train_model, optimizer, scaler) -> tuple[float, float, bool]:
    """One optimizer step over the global batch (train_batch draws its micro-batches); return (mean loss, gradient
    norm, finite). A step with a non-finite loss or gradient is skipped.
    """
    ranks = run.ranks
    micro_steps = run.cfg.gradient_accumulation_steps // ranks.world_size  # on this rank
    loss_sum = torch.zeros((), device=ranks.device)
    for micro in range(micro_steps):
        batch = train_batch(run, model, micro)
        run.tokens_pending = run.tokens_pending + run.batches.count_tokens(batch)  # real tokens, for tokens/s
        with distributed.grad_sync(train_model, sync=micro == micro_steps - 1):  # all-reduce on the last only
            with run.autocast:
                _, loss = train_model(**batch)
            loss = loss / micro_steps  # DDP/FSDP average over ranks: the mean over the global batch
            scaler.scale(loss).backward()
        loss_sum += loss.detach()
    loss_value = distributed.mean_over_ranks(loss_sum, ranks).item()  # the same on every rank
    grad_norm = 0.0
    if run.cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        grad_norm = distributed.scalar(torch.nn.utils.clip_grad_norm_(model.parameters(), run.cfg.grad_clip))
    finite = math.isfinite(loss_value) and (math.isfinite(grad_norm) or scaler.is_enabled())
    if finite or scaler.is_enabled():  # with float16 the scaler itself skips non-finite gradients
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm, finite


def check_finite(run: Run, loss_value: float, grad_norm: float, finite: bool) -> None:
    """Count non-finite steps in a row; report each, and stop (TrainingDiverged) after max_nonfinite_steps."""
    run.nonfinite_in_a_row = 0 if finite else run.nonfinite_in_a_row + 1
    if finite:
        return
    run.log.print(f"iter {run.iter_num}: non-finite loss {loss_value} (gradient norm {grad_norm}); step skipped, "
                  f"{run.nonfinite_in_a_row} in a row")
    run.log.log({"nonfinite_steps": run.nonfinite_in_a_row}, run.iter_num)
    if run.nonfinite_in_a_row >= run.cfg.max_nonfinite_steps:
        raise TrainingDiverged(f"the loss was non-finite for {run.nonfinite_in_a_row} steps in a row (iter "
                               f"{run.iter_num}); {checkpoint_note(run)}, or start again; either way with a lower "
                               "--learning_rate or --grad_clip, or raise --max_nonfinite_steps.")


def duration(seconds: float) -> str:
    """3h05m, 4m07s or 12s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Window:
    """The training since the last progress line (tokens/s, ms/iter, MFU): when it began, its iterations, the run's
    tokens then; the tokens/s of the last line (the next evaluation logs it); FLOPs per token and the peak FLOP/s."""

    token_flops: float
    peak: float | None
    tokens: int
    started: float = field(default_factory=time.perf_counter)
    iters: int = 0
    tokens_per_s: float = 0.0

    def restart(self, tokens: int) -> None:
        """Begin a new window now (after a progress line, or an evaluation: evaluation time is not training time)."""
        self.started, self.iters, self.tokens = time.perf_counter(), 0, tokens


def progress_window(run: Run, model) -> Window:
    """The first Window of the loop; says when MFU is unknown (a GPU not in training/mfu.py's table)."""
    token_flops, (peak, gpu_name) = flops_per_token(model, run.model_cfg.block_size), device_peak(run.ranks.device)
    if run.ranks.device.startswith("cuda") and peak is None:
        run.log.print(f"MFU unknown for {gpu_name} (not in training/mfu.py's table of peak FLOP/s)")
    return Window(token_flops, peak, run.tokens)


def attention_stats(run: Run, model) -> float:
    """Every attn_stats_interval iterations, log attention statistics (rank 0 alone: a sharded model would need
    every rank's forward); return the seconds it took, which are not training time."""
    cfg = run.cfg
    if not (cfg.attn_stats_interval and run.iter_num % cfg.attn_stats_interval == 0 and not cfg.eval_only
            and run.ranks.master and not cfg.fsdp):
        return 0.0
    started = time.perf_counter()
    log_attention(model, run.batches.get("val", torch.Generator().manual_seed(cfg.seed + 2)), run.tokenizer,
                  run.iter_num, cfg.wandb_log)
    return time.perf_counter() - started


def log_progress(run: Run, loss_value: float, lr: float, window: Window) -> None:
    """Rank 0's line every log_interval iterations (progress, loss, lr, time, tokens/s, MFU, ETA) over the window
    since the last line, which then restarts. The ETA extrapolates this run's wall time so far (evaluations and
    saves included) over the iterations left."""
    cfg = run.cfg
    done = run.iter_num - run.start_iter
    tokens = run.count_tokens()
    seconds, iters = time.perf_counter() - window.started, window.iters
    tokens_per_s = (tokens - window.tokens) / seconds
    peak = window.peak
    utilisation = f", MFU {100 * mfu(tokens_per_s, window.token_flops, peak, run.ranks.world_size):.1f}%" if peak else ""
    eta = (time.perf_counter() - run.started) / done * (cfg.max_iters - run.iter_num)
    run.log.print(f"iter {run.iter_num}/{cfg.max_iters} ({100 * run.iter_num / max(1, cfg.max_iters):.0f}%): loss "
                  f"{loss_value:.4f}, lr {lr:.2e}, {seconds / iters * 1000:.1f} ms/iter, "
                  f"{tokens_per_s / 1000:.1f}k tokens/s{utilisation}, ETA {duration(eta)}")
    run.log.log({"train/loss": loss_value, "lr": lr, "tokens_per_s": tokens_per_s}, run.iter_num)
    window.tokens_per_s = tokens_per_s
    window.restart(tokens)


def summary(run: Run) -> str:
    """The end-of-run lines: val losses, wall time, tokens/s, where the checkpoints are."""
    wall = time.perf_counter() - run.started
    trained = run.iter_num - run.start_iter
    if run.saved is None:
        kept = "no checkpoint was saved" + ("" if run.cfg.always_save_checkpoint else
                                            " (always_save_checkpoint=False and the val loss never improved)")
    else:
        kept = f"checkpoint {run.ckpt_path} (iter {run.saved[0]})"
        if run.cfg.keep_best and os.path.exists(run.best_path):
            kept += f", best model {run.best_path}"
    return (f"done: iter {run.iter_num}/{run.cfg.max_iters}, {trained} iterations in {duration(wall)} "
            f"({(run.tokens - run.tokens_at_start) / max(wall, 1e-9) / 1000:.1f}k tokens/s, evaluations included); "
            f"val loss {run.last_val_loss:.4f}, best {run.best_val_loss:.4f}; {kept}")


def family_notes() -> tuple[str, ...]:
    """--help's line per model_type other than gpt: which model keys it has beyond GPT's, and which it lacks."""
    gpt = field_types(FAMILIES["gpt"].config)
    notes = []
    for name, entry in FAMILIES.items():
        own = field_types(entry.config)
        extra, lacks = [k for k in own if k not in gpt], [k for k in gpt if k not in own]
        notes.append(f"model_type={name}: gpt's model keys" + (f", without {', '.join(lacks)}" if lacks else "")
                     + (f"; also {', '.join(extra)}" if extra else "") + ".")
    return tuple(notes[1:])


def main(argv: list[str]) -> None:
    """Train (or, with --eval_only, evaluate) the model the command line describes."""
    if wants_help(argv):
        print(usage(__doc__, {"training options (defaults)": TrainConfig,
                              "model options of model_type=gpt (defaults)": FAMILIES["gpt"].config},
                    family_notes()), end="")
        return
    lock = run = cfg = None
    try:
        parsed = read_config(argv)
        cfg = parsed[1]
        lock, lock_error = lock_run_dir(cfg)  # before anything in out_dir is read or written
        cfg, model_cfg, ckpt = load_config(argv, parsed) if lock_error is None else (*parsed[1:], None)
        ranks, dtype, autocast = setup_system(cfg, ckpt, lock_error)
        tokenizer, batches, model_cfg = setup_data(cfg, model_cfg, ckpt, ranks)
        run = Run(cfg, model_cfg, ranks, dtype, autocast, tokenizer, batches, RunLogger(cfg, ranks.master))
        model, train_model, optimizer, scaler = build_model(run)
        if ckpt is not None:
            resume(run, ckpt, model, optimizer, scaler)
        del ckpt
        with distributed.stop_together(ranks):  # rank 0 alone opens metrics.jsonl and wandb; if it cannot, all stop
            run.wandb_id = run.log.start(model_cfg, run.start_iter, run.wandb_id)
        notice = "stopping after this step to save a checkpoint (press Ctrl-C again to quit at once, saving nothing)"
        with GracefulStop(notice if ranks.master else "", enabled=not cfg.eval_only) as stop:
            train_loop(run, model, train_model, optimizer, scaler, stop)
    except KeyboardInterrupt:
        raise Interrupted("interrupted, nothing more saved; " + checkpoint_note(run, cfg)) from None
    finally:
        if lock is not None:
            release(lock)
    if not cfg.eval_only:
        run.log.print(summary(run))
    run.log.finish()


def checkpoint_note(run: Run | None, cfg: TrainConfig | None = None) -> str:
    """What out_dir's ckpt.pt holds now, as a true clause for a message (before the run exists: from `cfg`)."""
    if run is None and cfg is None:
        return "nothing was written"
    path = run.ckpt_path if run is not None else os.path.join(cfg.out_dir, "ckpt.pt")
    saved, now = (run.saved if run is not None else None), inode(path)
    if run is not None and run.saving is not None and now != run.saving[1]:
        saved = (run.saving[0], now)  # interrupted just after the save in progress replaced the file
    if saved is not None and now == saved[1]:
        return f"{path} holds iter {saved[0]}: continue with --init_from=resume"
    return f"{path} was not changed" if now is not None else "no checkpoint was saved"


def train_loop(run: Run, model, train_model, optimizer, scaler, stop: GracefulStop) -> None:
    """Evaluate, save and step until max_iters (or once, with eval_only); on a signal, save and stop."""
    cfg, ranks = run.cfg, run.ranks
    window = progress_window(run, model)  # tokens/s, ms/iter and MFU since the last progress line
    run.started = time.perf_counter()
    while True:
        lr = lr_at(run.iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups have their own peak rate
        resumed_here = run.iter_num == run.start_iter > 0 and run.evaluated and not cfg.eval_only  # evaluated before the save
        if (run.iter_num % cfg.eval_interval == 0 or run.iter_num >= cfg.max_iters or cfg.eval_only) \
                and not resumed_here:
            evaluate_and_save(run, model, optimizer, scaler, lr, run.elapsed_before + time.perf_counter() - run.started,
                              window.tokens_per_s)
            if cfg.eval_only:
                break
            window.restart(run.tokens)  # evaluation time is not training time
        window.started += attention_stats(run, model)  # analysis, not training time
        if run.iter_num >= cfg.max_iters:
            break
        step_start = time.perf_counter()
        loss_value, grad_norm, finite = train_step(run, model, train_model, optimizer, scaler)
        run.train_seconds += time.perf_counter() - step_start
        run.iter_num += 1
        run.evaluated = False
        window.iters += 1
        check_finite(run, loss_value, grad_norm, finite)
        if run.iter_num % cfg.log_interval == 0:
            log_progress(run, loss_value, lr, window)
        if stop.requested(ranks):
            stop_and_save(run, model, optimizer, scaler, stop.signum)


def stop_and_save(run: Run, model, optimizer, scaler, signum: int) -> None:
    """After a SIGINT/SIGTERM: save a checkpoint that resumes exactly, then raise Interrupted saying so.

    With always_save_checkpoint=False, ckpt.pt held the best model: it is kept as best.pt first (and the
    run goes on with keep_best=True), since ckpt.pt now gets the latest state."""
    cfg, note = run.cfg, ""
    if not cfg.always_save_checkpoint and not cfg.keep_best and run.saved is not None and run.ranks.master:
        copy_checkpoint(run.ckpt_path, run.best_path)
        note = f"; the best model so far (val loss {run.best_val_loss:.4f}) is {run.best_path}"
    if not cfg.always_save_checkpoint and not cfg.keep_best:
        run.cfg = replace(cfg, keep_best=True)
    save(run, model, optimizer, scaler, run.elapsed_before + time.perf_counter() - run.started)
    name = signal.Signals(signum).name
    raise Interrupted(f"{name}: saved {run.ckpt_path} at iter {run.iter_num} of {cfg.max_iters}{note}; continue "
                      f"with python train.py --out_dir={cfg.out_dir} --init_from=resume", 128 + signum)


if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, rank N > 0 tags its messages
    tag = f"[rank {rank}] " if rank else ""
    try:
        main(sys.argv[1:])
    except (UserError, FileNotFoundError) as e:
        print(f"{tag}error: {e}", file=sys.stderr, flush=True)
        distributed.settle(e)
        sys.exit(1)
    except Interrupted as e:
        if not rank:  # every rank stops at the same step; one says so
            print(f"{e}", file=sys.stderr, flush=True)
        sys.exit(e.code)
    finally:
        distributed.teardown()
