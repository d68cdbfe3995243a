"""nanoGPT's documented CPU settings for character-level Shakespeare (its README's laptop command), here on
the built-in dataset: Shakespeare's 38 plays (4.8M characters), NOT nanoGPT's tiny shakespeare (1.1M), so the
val loss is not comparable with nanoGPT's 1.886 at iteration 2000. For nanoGPT's setting, train on tiny
shakespeare's input.txt (README: "nanoGPT's setting"; docs/benchmarks.md compares both loops on it)."""
out_dir = "out-shakespeare-char-cpu"
dataset = "shakespeare_plays_char"
device = "cpu"
compile = False
eval_interval = 250
eval_iters = 20
log_interval = 10
batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
weight_decay = 0.1
