"""Rank 0's record of a run: printed lines, metrics.jsonl (one JSON record per evaluation) and wandb.

wandb is imported only when --wandb_log=True; the attention heatmaps logged to it need matplotlib.
"""

import json
import os

import torch

from lens.heatmaps import heatmap_figure
from lens.recorder import head_stats_all, stats_table
from training.config import to_dict
from weights.common import ConfigError, atomic_write


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
    with atomic_write(path, "w") as f:
        f.writelines(lines)


SPLIT_DETAILS = ("ppl", "bpc", "bpb", "tokens")  # shown in brackets after each split's loss


def evaluation_text(losses: dict) -> str:
    """'train loss 2.1 (ppl 8.17, 3.03 bpc), val loss ...' and the val split's other metrics."""
    parts = []
    for split in ("train", "val", "file"):
        if f"{split}_loss" not in losses:
            continue
        details = [f"ppl {losses[f'{split}_ppl']:.2f}"] if f"{split}_ppl" in losses else []
        details += [f"{losses[f'{split}_{k}']:.3f} {k}" for k in ("bpc", "bpb") if f"{split}_{k}" in losses]
        if f"{split}_tokens" in losses:
            details.append(f"every window: {losses[f'{split}_tokens']:,} tokens")
        parts.append(f"{split} loss {losses[f'{split}_loss']:.4f}" + (f" ({', '.join(details)})" if details else ""))
    parts += [f"{k[4:]} {v:.4f}" for k, v in losses.items()
              if k.startswith("val_") and k[4:] not in ("loss",) + SPLIT_DETAILS]
    return ", ".join(parts)


class RunLogger:
    """Prints, appends to out_dir/metrics.jsonl and logs to wandb; every method is a no-op off rank 0."""

    def __init__(self, cfg, master: bool):
        self.cfg, self.master = cfg, master
        self.metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
        self.wandb = None

    def start(self, model_cfg, iter_num: int, wandb_id: str | None) -> str | None:
        """Prepare metrics.jsonl (kept up to iter_num when resuming) and wandb; return the wandb run id."""
        cfg = self.cfg
        if not self.master:
            return wandb_id
        if not cfg.eval_only:
            try:
                os.makedirs(cfg.out_dir, exist_ok=True)
                keep_metrics(self.metrics_path, iter_num if iter_num > 0 else -1)
            except OSError as e:
                raise ConfigError(f"cannot write to out_dir {cfg.out_dir!r} ({e.strerror}); pick a writable --out_dir.")
        if cfg.wandb_log:
            try:
                import wandb  # lazy: only --wandb_log needs it
            except ImportError:
                raise ConfigError("--wandb_log=True needs wandb (pip install wandb), or pass --wandb_log=False.") from None
            try:
                run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, id=wandb_id, resume="allow",
                                 config={**to_dict(cfg), **to_dict(model_cfg)},
                                 dir=os.environ.get("WANDB_DIR") or cfg.out_dir)  # not the current folder
            except Exception as e:  # no login, no network, a bad project: wandb's errors have no common class
                reason = (str(e).strip().splitlines() or [""])[0]
                raise ConfigError(f"wandb could not start a run ({type(e).__name__}: {reason}); log in (wandb "
                                  "login), set WANDB_MODE=offline, or pass --wandb_log=False.") from None
            self.wandb, wandb_id = wandb, run.id
        return wandb_id

    def print(self, line: str) -> None:
        """Print a line on rank 0."""
        if self.master:
            print(line, flush=True)

    def log(self, values: dict, step: int) -> None:
        """Send values to wandb (when it is on)."""
        if self.master and self.wandb is not None:
            self.wandb.log(values, step=step)

    def evaluation(self, losses: dict, record: dict, write: bool) -> None:
        """Print an evaluation; with `write`, append its record to metrics.jsonl and wandb."""
        self.print(f"step {record['iter']}: {evaluation_text(losses)}")
        if write and self.master:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.log(record, record["iter"])

    def finish(self) -> None:
        """Close the wandb run."""
        if self.master and self.wandb is not None:
            self.wandb.finish()


def log_attention(model, batch: dict, tokenizer, step: int, wandb_log: bool = False) -> None:
    """Per-head statistics on the first example of `batch`, printed as a table; with wandb_log, logged
    to wandb too, with one heatmap image per layer (train.py --attn_stats_interval=N)."""
    first = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(**first, names_filter="*attn.pattern", device="cpu")
    finally:
        model.train(was_training)
    stats = head_stats_all(cache, query_mask=first.get("attention_mask"))  # BERT's padding queries left out
    print(f"attention at step {step}:\n{stats_table(stats)}")
    if not wandb_log:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import wandb

    record = {f"attn/{name}.{h}/{stat}": float(v) for name, s in stats.items()
              for stat, values in s.items() for h, v in enumerate(values)}
    ids = first["idx"][0].tolist() if "idx" in first else []

    def labels(n: int) -> list[str]:  # token text where the map runs over idx, positions otherwise
        return [tokenizer.decode([i]) for i in ids] if len(ids) == n else [str(i) for i in range(n)]

    for name, pattern in cache.items():
        maps = pattern[0].float().numpy()
        fig = heatmap_figure(maps, labels(maps.shape[1]), labels(maps.shape[2]), name)
        record[f"attn/{name.removesuffix('.pattern')}/pattern"] = wandb.Image(fig)
        plt.close(fig)
    wandb.log(record, step=step)
