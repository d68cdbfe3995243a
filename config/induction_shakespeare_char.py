"""config/induction_shakespeare_repeats.py's model on the built-in Shakespeare (characters, no repeats),
256 characters of context: a previous-token head forms, an induction head does not in these 4000
iterations (about 5 minutes on one CPU thread; docs/induction_heads.md).
Plot with `python tools/plot_heads.py out-induction`."""
out_dir = "out-induction"
dataset = "shakespeare_plays_char"
device = "cpu"
attn_only = True
pos_emb = "rope"
n_layer = 2
n_head = 4
n_embd = 64
block_size = 256
batch_size = 16
dropout = 0.0
learning_rate = 3e-3
max_iters = 4000
lr_decay_iters = 4000
warmup_iters = 50
min_lr = 3e-4
eval_interval = 200
eval_iters = 2
log_interval = 200
head_probe = True
