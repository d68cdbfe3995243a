"""The reversal config (config/seq2seq_reverse.py) with hard cross-attention trained by REINFORCE only: no
relaxed gradient reaches the attention scores. The REINFORCE recipe that met the goal of issue #35
(docs/attention_variants.md, "REINFORCE on the reversal task"): each choice credited with its own target
character's loss, each line twice in a batch with each sample's baseline its twin's loss (RLOO), 32 lines a
step (64 rows: Gumbel's rows and about its cost per step), on one schedule of 1,800 iterations, twice Gumbel's 900.
Measured on the quiet 2-core host beside Gumbel's 900 iterations: 0.992 of the held-out characters
(teacher-forced), 79.3% of the 2,000 held-out lines exact, in 1.89x Gumbel's training time (472 s against
250 s); Gumbel (--hard_attention_estimator=gumbel with config/seq2seq_reverse.py) gets 0.9985 and 96.2%."""
out_dir = "out-seq2seq-reinforce"
model_type = "seq2seq"
dataset = "reverse"
device = "cpu"
block_size = 42
source_block_size = 40
n_layer = 2
n_encoder_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0
qk_norm = True
cross_attn_weighting = "hard"
hard_attention_estimator = "reinforce"
hard_attention_credit = "own"  # each choice gets its own character's loss (biased in the first decoder layer)
hard_attention_baseline = "samples"  # RLOO: each sample's baseline is its twin's loss at the same character
hard_attention_samples = 2  # each line twice per batch: 32 lines, 64 rows a step
batch_size = 32
optimizer = "muon"
muon_lr = 0.03
learning_rate = 2e-3
max_iters = 1800
lr_decay_iters = 1800
warmup_iters = 50
min_lr = 1e-4
eval_interval = 300
eval_iters = 10
log_interval = 25
