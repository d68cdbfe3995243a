"""Weight space with TransformerLens' names: per-head views of our fused weights, the QK and OV circuits,
composition scores, OV copying scores, and the norms folded into the weights.

    ws = WeightSpace(fold_weights(model))  # lens.tl.HookedTransformer has these as model.W_Q, model.QK, ...
    ws.W_Q                                 # (n_layer, n_head, d_model, d_head); W_O (n_layer, n_head, d_head, d_model)
    ws.QK[1, 0].eigenvalues                # FactoredMatrix per (layer, head): W_Q W_K^T, (d_model, d_model)
    ws.all_composition_scores("K")         # (layer, head, layer, head), zero unless the first layer is earlier
    ws.copying_scores()                    # (layer, head): sum(eig) / sum(|eig|) of W_E W_V W_O W_U
    ws.copying_top1(embedding=E)           # (layer, head): tokens whose own logit tops their row of E W_V W_O W_U

`head_weights(attn)` gives one layer's W_Q, W_K, W_V (n_head, d_model, d_head), W_O (n_head, d_head,
d_model) and b_* as views of `c_attn` / `c_proj`: writing into them writes the model. The stacked
properties are copies. Weights are read as they are: fold the norms first (`fold_weights`, as
TransformerLens' from_pretrained does) to read them in TransformerLens' default basis.
"""

import torch
from torch import nn

from lens.factored import FactoredMatrix, composition_scores
from lens.cache import LensError, get_stack


def head_weights(attn: nn.Module) -> dict[str, torch.Tensor]:
    """One self-attention's W_Q, W_K, W_V (nh, C, hs), W_O (nh, hs, C), b_Q, b_K, b_V (nh, hs), b_O (C): views."""
    if not hasattr(attn, "c_attn"):
        raise LensError("per-head weights are defined for self-attention (c_attn); cross-attention reads a "
                        "second stream: read its q_attn / kv_attn directly.")
    nh, hs = attn.n_head, attn.head_dim
    C = attn.c_proj.out_features
    weight = attn.c_attn.weight  # (3C, C): rows q, k, v
    views = {name: weight[i * C:(i + 1) * C].view(nh, hs, C).transpose(1, 2) for i, name in enumerate("QKV")}
    views = {f"W_{name}": view for name, view in views.items()}
    views["W_O"] = attn.c_proj.weight.view(C, nh, hs).permute(1, 2, 0)  # (out C, in C) -> (nh, hs, C)
    bias = attn.c_attn.bias
    for i, name in enumerate("QKV"):
        views[f"b_{name}"] = bias[i * C:(i + 1) * C].view(nh, hs) if bias is not None else weight.new_zeros(nh, hs)
    views["b_O"] = attn.c_proj.bias if attn.c_proj.bias is not None else weight.new_zeros(C)
    return views


def check_bilinear(attn: nn.Module) -> None:
    """A LensError unless the head's score is q^T M k for a fixed M (no additive score, no QK-norm)."""
    if getattr(attn.scorer, "name", "") == "additive":
        raise LensError("the additive (Bahdanau) score is not a bilinear form q^T M k: this model has no QK circuit.")
    if not isinstance(attn.q_norm, nn.Identity):
        raise LensError("with qk_norm the queries and keys are normalised between W_Q, W_K and the score: the "
                        "QK circuit is not a fixed matrix here.")


class WeightSpace:
    """A model's weights with TransformerLens' names (one stack: "decoder" or "encoder" of a Seq2Seq)."""

    def __init__(self, model: nn.Module, stack: str | None = None):
        self.model = model
        self.structure = get_stack(model, stack)
        self.owner = {"decoder.": getattr(model, "decoder", None), "encoder.": getattr(model, "encoder", None)}.get(
            self.structure.prefix, model)

    @property
    def n_layers(self) -> int:
        return len(self.structure.blocks)

    @property
    def n_heads(self) -> int:
        return self.structure.blocks[0].attn.n_head

    def _stacked(self, name: str) -> torch.Tensor:
        return torch.stack([head_weights(block.attn)[name] for block in self.structure.blocks])

    W_Q = property(lambda self: self._stacked("W_Q"), doc="(n_layer, n_head, d_model, d_head)")
    W_K = property(lambda self: self._stacked("W_K"), doc="(n_layer, n_head, d_model, d_head)")
    W_V = property(lambda self: self._stacked("W_V"), doc="(n_layer, n_head, d_model, d_head)")
    W_O = property(lambda self: self._stacked("W_O"), doc="(n_layer, n_head, d_head, d_model)")
    b_Q = property(lambda self: self._stacked("b_Q"), doc="(n_layer, n_head, d_head)")
    b_K = property(lambda self: self._stacked("b_K"), doc="(n_layer, n_head, d_head)")
    b_V = property(lambda self: self._stacked("b_V"), doc="(n_layer, n_head, d_head)")
    b_O = property(lambda self: self._stacked("b_O"), doc="(n_layer, d_model)")

    def _mlps(self) -> list[nn.Module]:
        if any(block.attn_only for block in self.structure.blocks):
            raise LensError("this model is attention-only: it has no MLP weights.")
        return [block.mlp for block in self.structure.blocks]

    @property
    def W_in(self) -> torch.Tensor:
        """(n_layer, d_model, d_mlp) (a gated MLP: both halves, 2 d_mlp)."""
        return torch.stack([mlp.c_fc.weight.T for mlp in self._mlps()])

    @property
    def W_out(self) -> torch.Tensor:
        """(n_layer, d_mlp, d_model)."""
        return torch.stack([mlp.c_proj.weight.T for mlp in self._mlps()])

    @property
    def b_in(self) -> torch.Tensor:
        """(n_layer, d_mlp); zeros without biases."""
        return torch.stack([mlp.c_fc.bias if mlp.c_fc.bias is not None else mlp.c_fc.weight.new_zeros(mlp.c_fc.out_features)
                            for mlp in self._mlps()])

    @property
    def b_out(self) -> torch.Tensor:
        """(n_layer, d_model); zeros without biases."""
        return torch.stack([mlp.c_proj.bias if mlp.c_proj.bias is not None else mlp.c_proj.weight.new_zeros(mlp.c_proj.out_features)
                            for mlp in self._mlps()])

    @property
    def W_E(self) -> torch.Tensor:
        """Token embedding (d_vocab, d_model)."""
        return self.owner.wte.weight

    @property
    def W_pos(self) -> torch.Tensor:
        """Learned position embedding (n_ctx, d_model); a LensError with rotary positions."""
        if getattr(self.owner, "wpe", None) is None:
            raise LensError("this model has rotary positions (pos_emb='rope'): there is no W_pos table.")
        return self.owner.wpe.weight

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding (d_model, d_vocab)."""
        if self.structure.unembed is None:
            raise LensError("this stack has no linear unembedding (BERT's MLM head, an encoder): there is no W_U.")
        return self.structure.unembed.weight.T

    @property
    def b_U(self) -> torch.Tensor:
        """Unembedding bias (d_vocab); zeros unless fold_weights gave the head one."""
        bias = self.structure.unembed.bias if self.structure.unembed is not None else None
        return bias if bias is not None else self.W_U.new_zeros(self.W_U.size(1))

    @property
    def QK(self) -> FactoredMatrix:
        """Each head's W_Q W_K^T (a general score's matrix included), (n_layer, n_head, d_model, d_model);
        without the 1/sqrt(d_head) scale, and with rotary positions without the rotation (as TransformerLens)."""
        queries = []
        for block in self.structure.blocks:
            check_bilinear(block.attn)
            W_Q = head_weights(block.attn)["W_Q"]
            if getattr(block.attn.scorer, "name", "") == "general":  # q^T G k: G joins the query side
                W_Q = W_Q @ block.attn.scorer.weight
            queries.append(W_Q)
        return FactoredMatrix(torch.stack(queries), self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """Each head's W_V W_O, (n_layer, n_head, d_model, d_model)."""
        return FactoredMatrix(self.W_V, self.W_O)

    def all_composition_scores(self, mode: str) -> torch.Tensor:
        """Q-, K- or V-composition of every earlier head's OV into every later head: (layer, head, layer, head).

        Entry [l1, h1, l2, h2] is ||OV[l1,h1] M[l2,h2]|| / (||OV|| ||M||) with M = QK (Q), QK^T (K) or OV (V),
        as TransformerLens' all_composition_scores; 0 where l1 >= l2."""
        if mode not in ("Q", "K", "V"):
            raise LensError(f"mode must be 'Q', 'K' or 'V', got {mode!r}.")
        right = {"Q": lambda: self.QK, "K": lambda: self.QK.T, "V": lambda: self.OV}[mode]()
        scores = composition_scores(self.OV, right)  # (l1, h1, l2, h2)
        layers = torch.arange(self.n_layers, device=scores.device)
        earlier = (layers[:, None] < layers[None, :])[:, None, :, None]
        return scores * earlier

    def full_OV(self, embedding: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> FactoredMatrix:
        """The full OV circuit E W_V W_O W_U of every head, (layer, head, n_tokens, n_tokens), rank d_head.

        E is W_E unless `embedding` (n_tokens, d_model) gives each token's row instead, e.g. the effective
        embedding a later layer reads (the token plus what earlier layers write at its position);
        `tokens` (n_tokens,) picks the unembedding columns of those tokens (all of them when None)."""
        W_U = self.W_U if tokens is None else self.W_U[:, torch.as_tensor(tokens, device=self.W_U.device)]
        E = self.W_E if embedding is None else embedding
        if E.dim() != 2 or E.shape != (W_U.size(1), W_U.size(0)):
            raise LensError(f"embedding must be (n_tokens, d_model) = {(W_U.size(1), W_U.size(0))}, one row per "
                            f"token of `tokens` (the whole vocabulary when tokens is None); got {tuple(E.shape)}.")
        return FactoredMatrix(E.to(self.W_V.dtype) @ self.W_V, self.W_O @ W_U)  # (l, h, n, hs) x (l, h, hs, n)

    def copying_scores(self, embedding: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Each head's OV copying score (Elhage et al. 2021): sum(eig) / sum(|eig|) of the full OV circuit
        W_E W_V W_O W_U (see full_OV for `embedding` and `tokens`), (layer, head).

        1: every eigenvalue positive (attending to a token raises its own logit); -1: all negative."""
        eig = self.full_OV(embedding, tokens).eigenvalues  # (l, h, d_head)
        return eig.sum(-1).real / eig.abs().sum(-1).clamp(min=1e-30)

    def copying_top1(self, embedding: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                     chunk: int = 1024) -> torch.Tensor:
        """Each head's fraction of tokens whose own logit is the largest in their row of the full OV circuit
        (attending to the token makes it the top prediction of the head's direct effect), (layer, head)."""
        circuit = self.full_OV(embedding, tokens)
        n = circuit.A.size(-2)
        hits = torch.zeros(circuit.A.shape[:-2])
        for first in range(0, n, chunk):  # rows in chunks: GPT-2's full circuit is 50257 x 50257 per head
            rows = circuit.A[..., first:first + chunk, :] @ circuit.B  # (l, h, rows, n)
            own = torch.arange(first, first + rows.size(-2), device=rows.device)
            hits += (rows.argmax(-1) == own).sum(-1).cpu()
        return hits / n
