"""Fine-tune OpenAI's GPT-2 (124M) on Shakespeare as GPT-2 BPE tokens, nanoGPT's recipe (constant small lr).
Prepare the data first: python data/shakespeare/prepare.py. About a minute on one GPU; on a CPU one
1024-token step of GPT-2 takes seconds, so add e.g. --block_size=256 --gradient_accumulation_steps=4."""
out_dir = "out-shakespeare"
init_from = "gpt2"
dataset = "shakespeare_plays"
eval_interval = 5
eval_iters = 40
log_interval = 1
always_save_checkpoint = False  # keep only the checkpoint with the best val loss
batch_size = 1
gradient_accumulation_steps = 32
block_size = 1024
max_iters = 20
learning_rate = 3e-5
decay_lr = False
dropout = 0.0
