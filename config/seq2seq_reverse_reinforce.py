"""The reversal config (config/seq2seq_reverse.py) with hard cross-attention trained by REINFORCE only: no
relaxed gradient reaches the attention scores. The REINFORCE recipe that learned the task best
(docs/attention_variants.md, "REINFORCE on the reversal task"): each choice credited with its own target
character's loss, each line twice in a batch with each sample's baseline its twin's loss (RLOO), 64 lines
a step (so twice the rows of config/seq2seq_reverse.py: about 1.85x Gumbel's time per step).
Measured: 900 iterations reach 0.932 of the held-out characters (teacher-forced) but 13.6% of the lines
exact; continued (python train.py config/seq2seq_reverse_reinforce.py --init_from=resume --max_iters=1800
--lr_decay_iters=1800) 0.990 and 70.3% at iteration 1,500, 0.994 and 85.5% at 1,800
(docs/attention_variants.md). Gumbel (--hard_attention_estimator=gumbel) gets 0.9985 and 95.5% at 900, at
about half the cost per step."""
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
hard_attention_samples = 2  # each line twice per batch: 64 lines, 128 rows a step
batch_size = 64
optimizer = "muon"
muon_lr = 0.03
learning_rate = 2e-3
max_iters = 900
lr_decay_iters = 900
warmup_iters = 50
min_lr = 1e-4
eval_interval = 300
eval_iters = 10
log_interval = 25
