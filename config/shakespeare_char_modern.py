"""The modern preset at nanoGPT's GPU char size (config/shakespeare_char.py: 6 layers, 384 wide, context 256,
batch 64, dropout 0.2) with rotary positions, RMSNorm, QK-norm, relu^2 MLPs, zero-initialised projections,
an untied head, soft-capped logits and Muon (Polar Express, NorMuon) for the blocks' matrices, on a
warmup-stable-decay schedule. The CPU preset's recipe scaled: its run is 0.165 of the classic one's iterations
(330 of 2,000), so this one is 0.165 of config/shakespeare_char.py's 5,000. Not yet measured on a GPU (see
docs/benchmarks.md)."""
out_dir = "out-shakespeare-char-modern"
dataset = "shakespeare_plays_char"
eval_interval = 125
eval_iters = 200
log_interval = 10
always_save_checkpoint = False
wandb_project = "shakespeare-char"
wandb_run_name = "mini-gpt-modern"
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
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
learning_rate = 3e-3
max_iters = 825
lr_decay_iters = 825
lr_schedule = "wsd"
cooldown_frac = 0.4
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 50
