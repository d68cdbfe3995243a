"""The modern recipe at nanoGPT's CPU size: same data, same model size and batch as shakespeare_char_cpu.py,
with rotary positions, RMSNorm, QK-norm, relu^2 MLPs, zero-initialised projections, an untied head,
soft-capped logits and Muon for the blocks' matrices. See docs/benchmarks.md for what it buys."""
out_dir = "out-shakespeare-char-cpu-modern"
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
# model options
pos_emb = "rope"
norm = "rmsnorm"
qk_norm = True
activation = "relu2"
zero_init = True
tie_embeddings = False
logit_softcap = 30.0
# optimizer: Muon for the blocks' matrices, AdamW (learning_rate) for embeddings, head and gains
optimizer = "muon"
muon_lr = 0.03
learning_rate = 3e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 50
weight_decay = 0.1
