"""A small character-level BERT (masked-language model) on the built-in Shakespeare: 2 post-norm layers, 64 wide.
Measured in docs/benchmarks.md (masked-token accuracy against the unigram baseline). Fill masks with:
python sample.py --out_dir=out-bert --start="To be, or not to [MASK]"
A 4-layer, 128-wide model (--n_layer=4 --n_head=4 --n_embd=128 --block_size=64 --batch_size=16) stays
longer on the unigram plateau: it needs more iterations than this one."""
model_type = "bert"
out_dir = "out-bert"
dataset = "shakespeare_char"
eval_interval = 500
eval_iters = 20
log_interval = 100
batch_size = 32
block_size = 32
n_layer = 2
n_head = 2
n_embd = 64
dropout = 0.0
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
warmup_iters = 100
weight_decay = 0.01
