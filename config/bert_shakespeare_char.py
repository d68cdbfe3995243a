"""A small character-level BERT (masked-language model) on the built-in Shakespeare: 2 pre-norm layers, 64 wide,
rotary positions. Measured in docs/benchmarks.md (masked-token accuracy against the unigram baseline; the probes
behind this recipe are there too). Fill masks with:
python sample.py --out_dir=out-bert --start="To be, or not to [MASK]e"
Rotary positions are what moved it off the unigram plateau (learned position embeddings need thousands of
iterations to learn to attend to the neighbours). A rotary, pre-norm BERT has no Hugging Face BertForMaskedLM
equivalent: for a model that save_pretrained exports, train with --pos_emb=learned --post_norm=True (slower to learn)."""
model_type = "bert"
out_dir = "out-bert"
dataset = "shakespeare_plays_char"
eval_interval = 500
eval_iters = 20
log_interval = 100
batch_size = 32
block_size = 32
n_layer = 2
n_head = 2
n_embd = 64
dropout = 0.0
pos_emb = "rope"
post_norm = False
learning_rate = 3e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 3e-4
warmup_iters = 100
weight_decay = 0.01
