"""A 2-layer attention-only model on the built-in Shakespeare (characters), logging every head's
induction and previous-token scores and the in-context score at each evaluation (head_probe).
Plot with `python tools/plot_heads.py out-induction`; the run is recorded in docs/induction_heads.md."""
out_dir = "out-induction"
dataset = "shakespeare_char"
device = "cpu"
attn_only = True
n_layer = 2
n_head = 4
n_embd = 64
block_size = 96
batch_size = 16
dropout = 0.0
learning_rate = 3e-3
max_iters = 1000
lr_decay_iters = 1000
warmup_iters = 50
min_lr = 3e-4
eval_interval = 50
eval_iters = 2
log_interval = 50
head_probe = True
