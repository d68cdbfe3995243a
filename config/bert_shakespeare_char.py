"""A character-level BERT (masked-language model) on the built-in Shakespeare: 4 post-norm layers, 128 wide.
On 2 quiet CPU cores about 4 minutes; see docs/benchmarks.md. Fill masks with:
python sample.py --out_dir=out-bert --start="To be, or not to [MASK]" """
model_type = "bert"
out_dir = "out-bert"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 20
log_interval = 50
batch_size = 16
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
learning_rate = 1e-3
max_iters = 2500
lr_decay_iters = 2500
min_lr = 1e-4
warmup_iters = 100
weight_decay = 0.01
