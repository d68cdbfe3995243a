"""GPT-2 124M from scratch on FineWeb-Edu (data/fineweb/prepare.py; sample-10BT), as in published
reproductions (nanoGPT, build-nanogpt): 524,288 tokens per step (16 x 1024 tokens x 32 micro-steps),
lr 6e-4 with 715 warmup steps and cosine decay to 6e-5 over 19,073 steps (one pass over 10B tokens),
AdamW betas (0.9, 0.95), weight decay 0.1, gradient clipping 1.0.
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
With DDP the gradient_accumulation_steps below is the total over all GPUs (each does 32 / 8 = 4)."""
out_dir = "out-gpt2"
dataset = "fineweb"
wandb_project = "headscope-gpt2"
wandb_run_name = "gpt2-124M"
# model: GPT-2 small
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
bias = True
activation = "gelu_tanh"
dropout = 0.0
# batch: 16 x 1024 x 32 = 524,288 tokens per optimizer step
batch_size = 16
gradient_accumulation_steps = 32
# optimizer and schedule
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 715
max_iters = 19073
lr_decay_iters = 19073
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
# evaluation and system
eval_interval = 250
eval_iters = 100
log_interval = 10
compile = True
