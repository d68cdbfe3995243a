"""config/induction_shakespeare_char.py on Shakespeare with every line written twice
(data/shakespeare_repeats/prepare.py): copying the repeat is what induction heads learn.
Plot with `python tools/plot_heads.py out-induction-repeats`; recorded in docs/induction_heads.md."""
out_dir = "out-induction-repeats"
dataset = "shakespeare_repeats"
device = "cpu"
attn_only = True
n_layer = 2
n_head = 4
n_embd = 64
block_size = 96
batch_size = 16
dropout = 0.0
learning_rate = 3e-3
max_iters = 600
lr_decay_iters = 600
warmup_iters = 50
min_lr = 3e-4
eval_interval = 50
eval_iters = 2
log_interval = 50
head_probe = True
