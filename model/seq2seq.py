"""Encoder-decoder Transformer: at every output step the decoder looks back at all the encoder's states.

The encoder is a stack of bidirectional blocks over the source; the decoder's blocks run causal
self-attention, cross-attention over the encoder output and the MLP. All of them are the shared
`Block`, so the hook points read `encoder.blocks.0.attn.pattern`, `decoder.blocks.1.cross_attn.pattern`.
Padding: `src_mask` (B, S), True at real source tokens, masks padded keys in the encoder and in every
cross-attention; padded target positions are ignored by the loss (targets IGNORE_INDEX, -100) and, being after the
real ones, are never seen by them through the causal mask (`tgt_mask` masks them explicitly if needed).

Decoding (greedy, sampling, beam search) runs the encoder once per source. Each decoder layer keeps a
self-attention KV cache that grows by one position per step, and a cross-attention cache that is filled
from the encoder output at the first step and reused afterwards.
"""

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import PastKeyValues, make_mask
from model.config import Seq2SeqConfig
from model.generation import decode, padded_positions
from model.family import EmbeddingStem, Family, logits_and_loss, tie_head
from model.layers import Block, init_weights, make_norm, softcap
from model.sampling import Sampling


class Encoder(EmbeddingStem, nn.Module):
    """Source tokens -> encoder states: embeddings and bidirectional blocks."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        self.add_stem(config.source_vocab_size, config.source_block_size, config, what="source",
                      limit_name="source_block_size", hint="shorten it or train with a larger source_block_size")
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_encoder_layer))
        self.ln_f = make_norm(config)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S) -> (B, S, C); padded positions (src_mask False) are never attended to."""
        S = src.size(1)
        # each row's positions count from its first real token: left padding changes nothing
        positions = None if src_mask is None or src_mask.shape != src.shape else padded_positions(src_mask)
        x = self.drop(self.stem(src, positions=positions))  # (B, S, C)
        mask = make_mask(S, S, causal=False, key_padding_mask=src_mask)  # (B, 1, 1, S) or None
        for block in self.blocks:
            x = block(x, mask=mask, positions=positions)
        return self.ln_f(x)


class Decoder(EmbeddingStem, nn.Module):
    """Target tokens and encoder states -> decoder states: causal self-attention, cross-attention, MLP."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        self.add_stem(config.vocab_size, config.block_size, config, what="target",
                      hint="decode fewer tokens or train with a larger block_size")
        self.blocks = nn.ModuleList(Block(config, cross=True) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor | None, src_mask: torch.Tensor | None = None,
                tgt_mask: torch.Tensor | None = None, caches: list[PastKeyValues] | None = None,
                cross_caches: list[PastKeyValues] | None = None) -> torch.Tensor:
        """tgt (B, T) -> (B, T, C), attending to memory (B, S, C); positions continue after `caches`.

        `tgt_mask` (B, cached + T) marks real target tokens; `memory` may be None once the
        cross caches are filled.
        """
        T = tgt.size(1)
        offset = caches[0].len if caches else 0
        positions = None  # with a mask, each row counts from its first real token (as GPT's)
        if tgt_mask is not None and tgt_mask.shape == (tgt.size(0), offset + T):
            positions = padded_positions(tgt_mask)[:, offset:]
        x = self.drop(self.stem(tgt, offset, positions))  # (B, T, C)
        self_mask = None
        if tgt_mask is not None:
            self_mask = make_mask(T, offset + T, causal=True, key_padding_mask=tgt_mask, offset=offset,
                                  device=tgt.device)
        cross_mask = None if src_mask is None else src_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        for i, block in enumerate(self.blocks):
            x = block(x, mask=self_mask, causal=True, source=memory, source_mask=cross_mask, positions=positions,
                      cache=caches[i] if caches else None, cross_cache=cross_caches[i] if cross_caches else None)
        return self.ln_f(x)


class Seq2Seq(Family):
    """Encoder-decoder with cross-attention; the LM head is tied to the target embedding (tie_embeddings)."""

    model_type = "seq2seq"

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.shared_vocab:  # one vocabulary: one embedding table for source and target
            self.decoder.wte = self.encoder.wte
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        tie_head(self.lm_head, self.decoder.wte, config)
        init_weights(self, max(config.n_layer, config.n_encoder_layer))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, targets: torch.Tensor | None = None,
                src_mask: torch.Tensor | None = None, tgt_mask: torch.Tensor | None = None):
        """Teacher forcing: src (B, S), tgt (B, T) (BOS + target) -> (logits (B, T, V), loss), loss None
        without targets.

        Targets equal to IGNORE_INDEX (-100, padding) are ignored by the loss.
        """
        memory = self.encoder(src, src_mask)
        return logits_and_loss(self.lm_head(self.decoder(tgt, memory, src_mask, tgt_mask)), targets,
                               self.config.logit_softcap, self)

    def new_caches(self, source_len: int) -> tuple[list[PastKeyValues], list[PastKeyValues]]:
        """Empty self-attention and cross-attention caches, one of each per decoder block."""
        blocks = self.decoder.blocks
        return [PastKeyValues(self.config.block_size) for _ in blocks], [PastKeyValues(source_len) for _ in blocks]

    def step_logits(self, tokens: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None,
                    caches) -> torch.Tensor:
        """Logits (B, V) of the next token after tokens (B, t): one new position with caches, all without."""
        if caches is None:
            x = self.decoder(tokens, memory, src_mask)
        else:
            x = self.decoder(tokens[:, -1:], memory, src_mask, caches=caches[0], cross_caches=caches[1])
        return softcap(self.lm_head(x[:, -1]), self.config.logit_softcap)

    def decode_limit(self, max_new_tokens: int | None) -> int:
        """The number of tokens a decoder may emit: max_new_tokens capped by block_size."""
        limit = self.config.block_size
        return limit if max_new_tokens is None else max(0, min(max_new_tokens, limit))

    @torch.no_grad()
    def generate(self, src: torch.Tensor, bos_id: int, eos_id: int, src_mask: torch.Tensor | None = None,
                 max_new_tokens: int | None = None, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Decode each source row of src (B, S); return its output ids, without BOS and EOS.

        temperature 0 (the default) is greedy; otherwise tokens are sampled (temperature, top_k, top_p).
        A row stops at EOS or after max_new_tokens (at most block_size) tokens.
        """
        steps = EncodedSteps(self, self.encoder(src, src_mask), src_mask, use_cache)
        bos = src.new_full((src.size(0), 1), bos_id)
        # GPT's decoding loop; a finished row idles on EOS, and decoding ends once every row has finished
        new = decode(steps, bos, self.decode_limit(max_new_tokens), Sampling(temperature, top_k, top_p), generator,
                     stop_token=eos_id, use_cache=use_cache)
        return [until_eos(row, eos_id) for row in torch.cat([bos, *new], dim=1)[:, 1:].tolist()]

    @torch.no_grad()
    def beam_search(self, src: torch.Tensor, bos_id: int, eos_id: int, src_mask: torch.Tensor | None = None,
                    beam_size: int = 4, max_new_tokens: int | None = None, length_penalty: float = 1.0,
                    use_cache: bool = True) -> list[list[int]]:
        """Beam search; return the best output ids of each source row, without BOS and EOS.

        Hypotheses are ranked by their summed log-probability divided by length ** length_penalty
        (the length counts EOS; 0 ranks by raw log-probability, 1 by the mean per token). A row is
        finished once beam_size hypotheses have ended with EOS among the top beam_size candidates of a
        step (beam_size 1 is then exactly greedy decoding).
        """
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}.")
        B, S = src.shape
        K = beam_size
        memory = self.encoder(src, src_mask).repeat_interleave(K, dim=0)  # (B*K, S, C), beams of a row together
        src_mask = None if src_mask is None else src_mask.repeat_interleave(K, dim=0)
        caches = self.new_caches(S) if use_cache else None
        tokens = src.new_full((B * K, 1), bos_id)
        scores = torch.full((B, K), float("-inf"), device=src.device)
        scores[:, 0] = 0.0  # one live hypothesis per row at the start: K copies would fill the beam with repeats
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        row_base = torch.arange(B, device=src.device)[:, None] * K  # (B, 1)
        for step in range(self.decode_limit(max_new_tokens)):
            logp = F.log_softmax(self.step_logits(tokens, memory, src_mask, caches).float(), dim=-1)
            V = logp.size(-1)
            candidates = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
            top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)  # (B, 2K): K live ones remain
            top_beam, top_token = top_index // V, top_index % V
            is_eos = top_token == eos_id
            for b, rank in (is_eos[:, :K] & torch.isfinite(top_scores[:, :K])).nonzero().tolist():
                if len(finished[b]) < K:
                    ids = tokens[b * K + top_beam[b, rank], 1:].tolist()
                    finished[b].append((top_scores[b, rank].item() / (step + 1) ** length_penalty, ids))
            if all(len(f) >= K for f in finished):
                break
            ongoing = top_scores.masked_fill(is_eos, float("-inf"))  # an ended hypothesis never goes on
            live = ongoing.topk(K, dim=1).indices  # (B, K)
            scores = ongoing.gather(1, live)  # -inf fills the beam when fewer than K candidates go on
            rows = (row_base + top_beam.gather(1, live)).view(-1)  # (B*K,) the beam each new one extends
            tokens = torch.cat([tokens[rows], top_token.gather(1, live).view(-1, 1)], dim=1)
            if caches is not None:  # cross caches are equal across a row's beams: no reorder needed
                for cache in caches[0]:
                    cache.reorder(rows)
        return best_hypotheses(finished, scores, tokens, length_penalty)


class EncodedSteps:
    """The steps of model/generation.py's decode for an encoder-decoder: the source is encoded once (memory),
    then each step is the model's step_logits (Seq2Seq's, or RNNEncoderDecoder's with its recurrent state)."""

    def __init__(self, model, memory: torch.Tensor, src_mask: torch.Tensor | None, use_cache: bool):
        self.model, self.memory, self.src_mask, self.use_cache, self.caches = model, memory, src_mask, use_cache, None

    def prefill(self, tokens: torch.Tensor, mask=None) -> torch.Tensor:
        """Logits (B, V) after tokens (B, t) through fresh caches (none without use_cache)."""
        self.caches = self.model.new_caches(self.memory.size(1)) if self.use_cache else None
        return self.step(tokens)

    def step(self, tokens: torch.Tensor, mask=None) -> torch.Tensor:
        """Logits (B, V) of the next token after tokens (B, t); with caches only the last one is fed."""
        return self.model.step_logits(tokens, self.memory, self.src_mask, self.caches)


def best_hypotheses(finished: list[list[tuple[float, list[int]]]], scores: torch.Tensor, tokens: torch.Tensor,
                    length_penalty: float) -> list[list[int]]:
    """The best of each row's finished hypotheses; rows cut by max_new_tokens let their live beams compete.

    scores (B, K) are the live beams' log-probabilities, tokens (B*K, 1 + length) their ids after BOS.
    """
    B, K = scores.shape
    length = tokens.size(1) - 1
    best = []
    for b in range(B):
        hypotheses = list(finished[b])
        if len(hypotheses) < K:
            for k in range(K):
                if torch.isfinite(scores[b, k]) and length > 0:
                    hypotheses.append((scores[b, k].item() / length ** length_penalty,
                                       tokens[b * K + k, 1:].tolist()))
        best.append(max(hypotheses, key=lambda h: h[0])[1] if hypotheses else [])
    return best


def until_eos(ids: list[int], eos_id: int) -> list[int]:
    """The ids before the first EOS."""
    return ids[:ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def cross_attention(model: Seq2Seq, src: torch.Tensor, tgt: torch.Tensor,
                    src_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Each decoder layer's cross-attention weights (B, nh, T, S) for a teacher-forced pass.

    Capturing a `cross_attn.pattern` hook point switches that layer to the explicit path.
    """
    _, cache = model.run_with_cache(src, tgt, src_mask=src_mask, names_filter="decoder.blocks.*.cross_attn.pattern")
    return [cache[f"decoder.blocks.{i}.cross_attn.pattern"] for i in range(len(model.decoder.blocks))]
