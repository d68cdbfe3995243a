"""A 2-layer attention-only model with rotary positions on Shakespeare with every line written twice
(data/shakespeare_repeats/prepare.py), logging every head's induction and previous-token scores and the
in-context score every 250 iterations (head_probe). About 3.5 minutes on 2 CPU cores.
Plot with `python tools/plot_heads.py out-induction-repeats`; the run is recorded in docs/induction_heads.md."""
out_dir = "out-induction-repeats"
dataset = "shakespeare_repeats"
device = "cpu"
attn_only = True
pos_emb = "rope"
n_layer = 2
n_head = 4
n_embd = 64
block_size = 128
batch_size = 16
dropout = 0.0
learning_rate = 3e-3
max_iters = 12000
lr_decay_iters = 12000
warmup_iters = 50
min_lr = 3e-4
eval_interval = 250
eval_iters = 2
log_interval = 250
head_probe = True
