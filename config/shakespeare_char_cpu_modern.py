"""The modern recipe at nanoGPT's CPU size: same data, model size and batch as shakespeare_char_cpu.py, with rotary
positions, RMSNorm, QK-norm, relu^2 MLPs, zero-initialised projections, an untied head, soft-capped logits, and
Muon (Polar Express orthogonaliser, NorMuon's per-neuron scaling) for the blocks' matrices, on a
warmup-stable-decay schedule of 330 iterations: by the speedrun's rules it ends below the classic config's val
loss at 2,000 iterations (0.165x of its tokens). See docs/benchmarks.md, "Time to a target loss"."""
out_dir = "out-shakespeare-char-cpu-modern"
dataset = "shakespeare_plays_char"
device = "cpu"
compile = False
eval_interval = 50
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
muon_method = "polar_express"
normuon = 0.95
muon_bf16 = True  # Muon's products in bfloat16: faster on CPUs with AMX / avx512_bf16; set False on others
learning_rate = 3e-3
# the whole run is the schedule: peak until the last 40%, then linear down to min_lr at iteration 330
max_iters = 330
lr_decay_iters = 330
lr_schedule = "wsd"
cooldown_frac = 0.4
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 50
weight_decay = 0.1
