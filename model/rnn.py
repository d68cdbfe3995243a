"""RNN encoder-decoder: the fixed-size bottleneck, and the attention that removed it.

The encoder is a GRU (or LSTM), bidirectional by default as in Bahdanau et al. (2015): each source
position gets a state of n_embd numbers, the forward and the backward direction's halves side by side.
Its summary, the forward state at the last real token and the backward state at the first, sets the
decoder's initial state. Two modes (`RNNConfig.attention`):

- no attention (Cho et al., 2014; Sutskever et al., 2014): the decoder reads the summary at every
  step, beside the previous token, and its output layer sees it too. Whatever the source length,
  everything the decoder knows about the source passes through those n_embd numbers.
- attention (Luong et al., 2015, global attention): each decoder state h_t is the query and the
  encoder states are the keys and values of headscope's one `Attention` module (cross-attention, any
  registered score and weighting; `additive` is Bahdanau's score, `dot` and `general` Luong's). The
  output layer reads tanh(W [h_t; context_t]). The attention comes after the recurrent step (no input
  feeding), so teacher forcing runs the recurrence over all positions at once and then one attention
  call: the hook points `decoder.cross_attn.pattern` (B, nh, T, S) and friends, the recorder, the
  heatmaps and the HTML viewer work as for the Transformer encoder-decoder.

Decoding (greedy, sampling, beam search) is the Transformer encoder-decoder's own code: this module
supplies what it calls, `encoder`, `new_caches`, `step_logits`, with the recurrent state in place of
the self-attention KV cache.
"""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.attention import Attention, PastKeyValues
from model.config import RNNConfig
from model.family import EmbeddingStem, Family, logits_and_loss
from model.hooks import HookPoint
from model.seq2seq import Seq2Seq

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNState:
    """The decoder's recurrent state between decoding steps: h (and c for an LSTM), (n_layer, B, C) each."""

    def __init__(self):
        self.value = None  # None until the first step sets it from the encoder
        self.len = 0  # tokens consumed

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows in `index` (beam search)."""
        if self.value is not None:
            self.value = map_state(self.value, lambda t: t[:, index])


def map_state(state, fn):
    """Apply fn to a GRU state tensor or to both tensors of an LSTM's (h, c)."""
    return tuple(fn(t) for t in state) if isinstance(state, tuple) else fn(state)


class RNNEncoder(EmbeddingStem, nn.Module):
    """Source tokens -> encoder states (B, S, C); padded positions are skipped (packed sequences)."""

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        self.add_stem(config.source_vocab_size, config.source_block_size, config, hooks=False, what="source",
                      limit_name="source_block_size", hint="shorten it or train with a larger source_block_size")
        hidden = config.n_embd // 2 if config.bidirectional else config.n_embd
        self.rnn = CELLS[config.cell](config.n_embd, hidden, config.n_layer, bias=config.bias, batch_first=True,
                                      dropout=config.dropout if config.n_layer > 1 else 0.0,
                                      bidirectional=config.bidirectional)
        self.states = HookPoint()  # (B, S, C)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S) -> (B, S, C): the top layer's states, both directions concatenated (zeros at padding)."""
        S = src.size(1)
        x = self.drop(self.stem(src))  # (B, S, C): no positions, the recurrence orders the tokens
        if src_mask is None:
            states, _ = self.rnn(x)
        else:
            lengths = src_mask.sum(1).cpu()
            if (lengths == 0).any():
                raise ValueError("every source row needs at least one real token (src_mask all False in a row).")
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            states, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=S)
        return self.states(states)


def summary(states: torch.Tensor, src_mask: torch.Tensor | None, bidirectional: bool) -> torch.Tensor:
    """The source in one vector (B, C): forward state at the last real token [+ backward state at the first]."""
    B, S, C = states.shape
    last = src_mask.sum(1) - 1 if src_mask is not None else torch.full((B,), S - 1, device=states.device)
    forward_last = states[torch.arange(B, device=states.device), last]  # (B, C)
    if not bidirectional:
        return forward_last
    return torch.cat([forward_last[:, :C // 2], states[:, 0, C // 2:]], dim=-1)


class RNNDecoder(EmbeddingStem, nn.Module):
    """Previous target tokens, recurrent state and encoder states -> output features (B, T, C)."""

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        C, L = config.n_embd, config.n_layer
        self.add_stem(config.vocab_size, config.block_size, config, hooks=False, what="target")
        self.init_state = nn.Linear(C, L * C, bias=config.bias)  # summary -> h_0 of every layer
        inputs = C if config.attention else 2 * C  # without attention the summary is read at every step
        self.rnn = CELLS[config.cell](inputs, C, L, bias=config.bias, batch_first=True,
                                      dropout=config.dropout if L > 1 else 0.0)
        if config.attention:
            self.cross_attn = Attention(config, cross=True, score=config.attn_score, weighting=config.attn_weighting)
        self.readout = nn.Linear(2 * C, C, bias=config.bias)  # [h_t; context] -> output features
        if not config.attention:
            self.context = HookPoint()  # (B, C): the fixed-size summary read at every step
        self.states = HookPoint()  # (B, T, C): h_t

    def first_state(self, memory: torch.Tensor, src_mask: torch.Tensor | None):
        """h_0 (n_layer, B, C) from the encoder's summary (an LSTM's cell state starts at zero)."""
        B, C = memory.size(0), self.config.n_embd
        h = torch.tanh(self.init_state(summary(memory, src_mask, self.config.bidirectional)))  # (B, L*C)
        h = h.view(B, self.config.n_layer, C).transpose(0, 1).contiguous()  # (L, B, C)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None,
                state=None, cross_cache: PastKeyValues | None = None):
        """tgt (B, T) -> (features (B, T, C), final state); `state` continues from earlier tokens."""
        if state is None:
            state = self.first_state(memory, src_mask)
        x = self.drop(self.stem(tgt))  # (B, T, C)
        if not self.config.attention:
            context = self.context(summary(memory, src_mask, self.config.bidirectional))  # (B, C)
            context = context[:, None].expand(x.shape)  # (B, T, C): the same vector at every step
            x = torch.cat([x, context], dim=-1)  # (B, T, 2C)
        h, state = self.rnn(x, state)
        h = self.states(h)  # (B, T, C)
        if self.config.attention:
            mask = None if src_mask is None else src_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
            context = self.cross_attn(h, source=memory, mask=mask, cache=cross_cache)  # (B, T, C)
        return self.drop(torch.tanh(self.readout(torch.cat([h, context], dim=-1)))), state


class RNNEncoderDecoder(Family):
    """GRU/LSTM encoder-decoder with or without attention; Seq2Seq's forward and decoding interface."""

    model_type = "rnn"

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        self.encoder = RNNEncoder(config)
        self.decoder = RNNDecoder(config)
        if config.shared_vocab:  # one vocabulary: one embedding table for source and target
            self.decoder.wte = self.encoder.wte
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.decoder.wte.weight

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, targets: torch.Tensor | None = None,
                src_mask: torch.Tensor | None = None, tgt_mask: torch.Tensor | None = None):
        """Teacher forcing: src (B, S), tgt (B, T) (BOS + target) -> (logits (B, T, V), loss), loss None
        without targets.

        Targets equal to IGNORE_INDEX (-100, padding) are ignored by the loss. `tgt_mask` is accepted for Seq2Seq's
        signature and not needed: padding comes after the real tokens, which a recurrence never reads back.
        """
        if tgt.size(1) > self.config.block_size:
            raise ValueError(f"target of {tgt.size(1)} tokens exceeds block_size {self.config.block_size}; "
                             "train with a larger block_size.")
        memory = self.encoder(src, src_mask)
        features, _ = self.decoder(tgt, memory, src_mask)
        return logits_and_loss(self.lm_head(features), targets, model=self)  # (B, T, V), loss (+ auxiliary terms) or None

    def new_caches(self, source_len: int) -> tuple[list[RNNState], list[PastKeyValues]]:
        """The decoder's recurrent state, and the attention's cache of encoder keys and values."""
        return [RNNState()], [PastKeyValues(source_len)]

    def step_logits(self, tokens: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None,
                    caches) -> torch.Tensor:
        """Logits (B, V) of the next token after tokens (B, t): one recurrent step with caches, t without."""
        if caches is None:  # rerun the recurrence over every token so far (the reference path)
            features, _ = self.decoder(tokens, memory, src_mask)
        else:
            state, cross_cache = caches[0][0], caches[1][0]
            if state.len + 1 > self.config.block_size:
                raise ValueError(f"decoding past block_size {self.config.block_size}; decode fewer tokens.")
            features, state.value = self.decoder(tokens[:, -1:], memory, src_mask, state.value,
                                                 cross_cache if self.config.attention else None)
            state.len += 1
        return self.lm_head(features[:, -1])

    # decoding is the Transformer encoder-decoder's: it needs only encoder, new_caches and step_logits
    decode_limit = Seq2Seq.decode_limit
    generate = Seq2Seq.generate
    beam_search = Seq2Seq.beam_search
