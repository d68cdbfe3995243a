"""A TransformerLens-flavoured entry point: ported notebook code runs with an import change.

    from lens.tl import HookedTransformer, test_prompt, get_act_name
    model = HookedTransformer.from_pretrained("gpt2")      # TransformerLens' processing: fold_ln, centring
    logits = model(tokens)                                   # bare logits (B, T, V), as TransformerLens returns
    loss = model(tokens, return_type="loss", loss_per_token=True)   # (B, T - 1)
    resid = model(tokens, stop_at_layer=3)                   # the residual stream before block 3
    logits = model(resid, start_at_layer=3)                  # and from there on
    logits, cache = model.run_with_cache("When Mary and John went to the store")
    test_prompt(model, "The Eiffel Tower is in the city of", "Paris")

A headscope model's own forward returns (logits, loss) (nanoGPT's convention); `HookedTransformer(model)`
wraps any GPT so that calls return what TransformerLens returns. Every other attribute (blocks, config,
hooks, W_Q, to_tokens, ...) is the wrapped model's. docs/transformer_lens.md has the porting table.
"""

import torch
import torch.nn.functional as F

from lens.cache import ActivationCache, LensError, batch_size_hooks
from lens.folding import fold_weights
from lens.tl_methods import bos_token, check_padding_side, pad_token, tokenizer_of
from model.gpt import GPT

RETURN_TYPES = ("logits", "loss", "both", None)
TL_ACT_NAMES = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
                "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "q": "attn.hook_q", "k": "attn.hook_k",
                "v": "attn.hook_v", "z": "attn.hook_z", "pattern": "attn.hook_pattern",
                "attn_scores": "attn.hook_attn_scores", "scores": "attn.hook_attn_scores",
                "result": "attn.hook_result", "post": "mlp.hook_post"}


def get_act_name(name: str, layer: int | None = None) -> str:
    """TransformerLens' utils.get_act_name: ("z", 0) -> "blocks.0.attn.hook_z"; ("embed") -> "hook_embed"."""
    if name in ("embed", "pos_embed"):
        return f"hook_{name}"
    if name not in TL_ACT_NAMES:
        raise LensError(f"unknown activation {name!r}; pick one of embed, pos_embed, {', '.join(TL_ACT_NAMES)}.")
    if layer is None:
        raise LensError(f"{name!r} is inside a block: give its layer, e.g. get_act_name({name!r}, 0).")
    return f"blocks.{layer}.{TL_ACT_NAMES[name]}"


def logits_of(output) -> torch.Tensor:
    """The logits of a forward's output ((logits, loss) or bare logits)."""
    return output[0] if isinstance(output, tuple) else output


class StopForward(Exception):
    """Raised by the hook that ends a forward pass at stop_at_layer; carries the residual stream."""

    def __init__(self, value: torch.Tensor):
        super().__init__("stop_at_layer")
        self.value = value


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each next token: (B, T - 1) per token, else the mean; with a mask only the
    targets whose token and predecessor are real count (0 elsewhere), as TransformerLens' loss."""
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none")
    if attention_mask is None:
        return loss if per_token else loss.mean()
    real = (attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()).to(loss.dtype)  # (B, T - 1)
    return loss * real if per_token else (loss * real).sum() / real.sum().clamp(min=1)


def get_attention_mask(model, tokens: torch.Tensor, prepend_bos: bool | None = None,
                       padding_side: str | None = "right") -> torch.Tensor:
    """TransformerLens' utils.get_attention_mask: (B, T) 1 at real tokens, 0 at the pad tokens before the
    first real token ("left") or after the last ("right"); the BOS, which is GPT-2's pad id too, stays
    1 when prepend_bos (None: when the tokenizer has a BOS). to_tokens(..., return_attention_mask=True)
    gives the same mask from the strings' lengths, also for a tokenizer without a pad token."""
    side = check_padding_side(padding_side)
    tokenizer = tokenizer_of(model)
    pad = pad_token(tokenizer)
    if pad is None:
        raise LensError("this tokenizer has no pad token, so padding cannot be told from text by its id; use "
                        "model.to_tokens(texts, padding_side=..., return_attention_mask=True).")
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 2:
        raise LensError(f"get_attention_mask takes (batch, length) token ids, got shape {tuple(tokens.shape)}.")
    real = tokens.ne(pad).long()
    if side == "right":
        mask = (real.flip(-1).cumsum(-1) > 0).flip(-1).long()  # 0 only after the last real token
    else:
        mask = (real.cumsum(-1) > 0).long()  # 0 only before the first real token
        if prepend_bos is not False and bos_token(tokenizer) == pad:  # the last leading pad is the BOS itself
            bos_at = (1 - mask).sum(-1) - 1  # (B,)
            rows = torch.nonzero(bos_at >= 0).flatten()
            mask[rows, bos_at[rows]] = 1
    return mask


class HookedTransformer:
    """A headscope GPT behind TransformerLens' call conventions (see the module docstring)."""

    def __init__(self, model):
        if not hasattr(model, "hook_names"):
            raise LensError(f"HookedTransformer wraps a headscope model (GPT); got {type(model).__name__}.")
        object.__setattr__(self, "model", model)

    @classmethod
    def from_pretrained(cls, name: str, fold_ln: bool = True, center_writing_weights: bool = True,
                        center_unembed: bool = True, fold_value_biases: bool = True) -> "HookedTransformer":
        """GPT.from_pretrained, then TransformerLens' default weight processing (lens/folding.py), in eval mode."""
        model = GPT.from_pretrained(name).eval()
        if fold_ln or center_writing_weights or center_unembed or fold_value_biases:
            tokenizer = getattr(model, "tokenizer", None)
            model = fold_weights(model, fold_ln, center_writing_weights, center_unembed, fold_value_biases)
            model.tokenizer = tokenizer
        return cls(model)

    @classmethod
    def from_pretrained_no_processing(cls, name: str) -> "HookedTransformer":
        """GPT.from_pretrained with the weights as stored."""
        return cls.from_pretrained(name, False, False, False, False)

    def __getattr__(self, name: str):
        return getattr(self.model, name)  # TransformerLens' methods too: model/__init__.py adds them to every model

    def __setattr__(self, name: str, value) -> None:
        setattr(self.model, name, value)

    def __repr__(self) -> str:
        return f"HookedTransformer({self.model!r})"

    def __call__(self, input, return_type: str | None = "logits", loss_per_token: bool = False,
                 prepend_bos: bool | None = None, stop_at_layer: int | None = None,
                 start_at_layer: int | None = None, tokens: torch.Tensor | None = None,
                 padding_side: str | None = None, attention_mask: torch.Tensor | None = None):
        """TransformerLens' forward: input is a string, a list of strings, token ids (B, T) or, with
        start_at_layer, the residual stream (B, T, d_model); return_type "logits", "loss", "both" or None.

        A list of strings with padding_side="left" gets its attention mask (B, T) from to_tokens, as
        TransformerLens derives one (right padding needs none: no real token reads a later one); token ids
        take `attention_mask` (1 at real tokens) themselves."""
        if return_type not in RETURN_TYPES:
            raise LensError(f"return_type must be one of {', '.join(map(str, RETURN_TYPES))}, got {return_type!r}.")
        if isinstance(input, (str, list)):
            input, mask = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side,
                                         return_attention_mask=True)
            if attention_mask is None and padding_side == "left" and not bool(mask.all()):
                attention_mask = mask
        if start_at_layer is None:
            tokens = input
        if stop_at_layer is not None:
            return self.residual_at(input, self.layer_index(stop_at_layer, "stop_at_layer"), start_at_layer,
                                    attention_mask)
        logits = self.run_from(input, start_at_layer, attention_mask)
        if return_type in ("logits", None):
            return logits if return_type else None
        if tokens is None:
            raise LensError("a loss with start_at_layer needs the token ids: pass tokens=.")
        loss = next_token_loss(logits, tokens, loss_per_token, attention_mask)
        return loss if return_type == "loss" else (logits, loss)

    forward = __call__

    def layer_index(self, layer: int, what: str) -> int:
        """A block index in 0..n_layer (-1 is n_layer - 1, as TransformerLens counts); a LensError outside."""
        n = len(self.model.blocks)
        if not -n <= layer <= n:
            raise LensError(f"{what}={layer} is out of range; this model has layers 0..{n} ({n}: after the last block).")
        return n + layer if layer < 0 else layer

    def run_from(self, input: torch.Tensor, start_at_layer: int | None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of token ids, or of the residual stream entering block start_at_layer."""
        if start_at_layer is None:
            return logits_of(self.model(input, attention_mask=attention_mask))
        start = self.layer_index(start_at_layer, "start_at_layer")
        if input.dim() != 3 or input.size(-1) != self.model.config.n_embd:
            raise LensError(f"with start_at_layer the input is the residual stream (B, T, {self.model.config.n_embd}), "
                            f"got {tuple(input.shape)}.")
        placeholder = torch.zeros(input.shape[:2], dtype=torch.long, device=input.device)  # the blocks before are skipped
        if start == len(self.model.blocks):
            name, value = f"blocks.{start - 1}.resid_post", input
        else:
            name, value = f"blocks.{start}.resid_pre", input
        with self.model.hooks([(name, lambda tensor, hook: value)]):
            return logits_of(self.model(placeholder, attention_mask=attention_mask))

    def residual_at(self, input: torch.Tensor, stop: int, start_at_layer: int | None,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream entering block `stop` (n_layer: after the last block), (B, T, d_model)."""
        n = len(self.model.blocks)
        name = f"blocks.{stop}.resid_pre" if stop < n else f"blocks.{n - 1}.resid_post"

        def stop_here(tensor, hook):
            raise StopForward(tensor)

        try:
            with self.model.hooks([(name, stop_here)]):
                self.run_from(input, start_at_layer, attention_mask)
        except StopForward as stopped:
            return stopped.value
        raise LensError(f"the forward pass never reached {name}.")

    def generate(self, input="", max_new_tokens: int = 10, stop_at_eos: bool = True, eos_token_id: int | None = None,
                 do_sample: bool = True, top_k: int | None = None, top_p: float | None = None,
                 temperature: float = 1.0, use_past_kv_cache: bool = True, prepend_bos: bool | None = None,
                 padding_side: str | None = None, return_type: str = "input", verbose: bool = True,
                 attention_mask: torch.Tensor | None = None):
        """TransformerLens' generate: a string, a list of strings (left-padded, as TransformerLens forces for a
        batch) or token ids (B, T) with their attention_mask, continued by max_new_tokens tokens (greedy unless
        do_sample); return_type "input" gives text for text and ids for ids, "str" text, "tokens" ids (B, T + n).
        stop_at_eos: a row that emits the end-of-text token (eos_token_id, else the tokenizer's) keeps emitting
        it and generation ends once every row has."""
        if return_type not in ("input", "str", "tokens"):
            raise LensError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}.")
        is_text = isinstance(input, (str, list))
        if is_text:
            check_padding_side(padding_side)  # a batch is left-padded whatever the side asked (TransformerLens)
            tokens, attention_mask = self.to_tokens(input, prepend_bos=prepend_bos, padding_side="left",
                                                    return_attention_mask=True)
        else:
            tokens = torch.as_tensor(input)
            tokens = tokens[None] if tokens.dim() == 1 else tokens
        tokenizer = getattr(self.model, "tokenizer", None)
        eos = eos_token_id if eos_token_id is not None else (bos_token(tokenizer) if tokenizer is not None else None)
        output = self.model.generate(tokens, max_new_tokens, temperature=temperature,
                                     top_k=top_k if do_sample else 1, top_p=top_p if do_sample else None,
                                     use_cache=use_past_kv_cache, attention_mask=attention_mask,
                                     stop_token=eos if stop_at_eos else None)
        if return_type == "tokens" or (return_type == "input" and not is_text):
            return output
        masks = [None] * len(output) if attention_mask is None else list(attention_mask)
        texts = [self.text_of(row, mask) for row, mask in zip(output, masks)]
        return texts[0] if len(texts) == 1 else texts

    def text_of(self, row: torch.Tensor, prompt_mask: torch.Tensor | None) -> str:
        """One generated row as text without its padding and BOS / end-of-text tokens (TransformerLens'
        skip_special_tokens)."""
        tokenizer = tokenizer_of(self.model)
        start = 0 if prompt_mask is None else int((prompt_mask == 0).sum())  # left padding
        special = {bos_token(tokenizer), pad_token(tokenizer)} - {None}
        return tokenizer.decode([int(t) for t in row[start:] if int(t) not in special])

    def run_with_hooks(self, *args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, **kwargs):
        """Call with (name, fn) hooks attached (fn(activation, hook) or our fn(tensor, name)); backward hooks
        fire when a loss computed from the output is differentiated, also after the call returns."""
        with self.model.hooks(fwd_hooks, bwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter=None, device=None, incl_bwd: bool = False, **kwargs):
        """(what the call returns, ActivationCache); incl_bwd differentiates the output (a scalar: use
        return_type="loss") and caches each hook's gradient too, as NAME_grad."""
        values = {}

        def store(suffix: str):
            def keep(tensor: torch.Tensor, hook) -> None:
                values[self.model.resolve_hook(str(hook))[0] + suffix] = tensor.detach().to(device or tensor.device,
                                                                                           copy=True)
            return keep

        names = self.model.match_hooks(names_filter)
        noting, found = batch_size_hooks(self.model)
        with self.model.hooks([*noting, (names, store(""))], [(names, store("_grad"))] if incl_bwd else []):
            output = self(*args, **kwargs)
            if incl_bwd:
                if not (isinstance(output, torch.Tensor) and output.numel() == 1):
                    raise LensError("incl_bwd differentiates the output, which must be one number: pass "
                                    "return_type='loss'.")
                output.backward()
        return output, ActivationCache(values, self.model, batch_size=found.get("batch_size"))


def test_prompt(model, prompt: str, answer: str | list[str], top_k: int = 10, prepend_bos: bool | None = None,
                prepend_space_to_answer: bool = True, print_details: bool = True) -> list[list[tuple[str, int]]]:
    """TransformerLens' test_prompt: for each answer token, print its rank, logit and probability after the
    prompt (and the answer tokens before it) and the top_k tokens; return [[(answer token, rank)], ...].

    A list of answers compares their first tokens as alternatives for the next token."""
    model = model if isinstance(model, HookedTransformer) else HookedTransformer(model)
    answers = [answer] if isinstance(answer, str) else list(answer)
    if not answers or not all(isinstance(a, str) and a for a in answers):
        raise LensError("answer must be a non-empty string or a list of them.")
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    prompt_ids = model.to_tokens(prompt, prepend_bos=prepend_bos)[0]
    answer_ids = [model.to_tokens(a, prepend_bos=False)[0] for a in answers]
    if len(answers) > 1:
        answer_ids = [ids[:1] for ids in answer_ids]
    tokens = torch.stack([torch.cat([prompt_ids, ids]) for ids in answer_ids])  # (answers, T)
    if print_details:
        print("Tokenized prompt:", model.to_str_tokens(prompt_ids))
        print("Tokenized answer" + ("s:" if len(answers) > 1 else ":"), [model.to_str_tokens(ids) for ids in answer_ids]
              if len(answers) > 1 else model.to_str_tokens(answer_ids[0]))
    with torch.no_grad():
        logits = model(tokens).float()  # (answers, T, V)
    ranks = []
    for offset in range(answer_ids[0].numel()):
        position = len(prompt_ids) + offset  # predicted from the position before it
        row = logits[:, position - 1]  # (answers, V)
        targets = tokens[:, position]
        rank = (row > row.gather(1, targets[:, None])).sum(1)  # how many tokens score higher
        ranks.append([(model.to_string(t[None]), int(r)) for t, r in zip(targets, rank)])
        if print_details:
            print_answer(model, row, targets, rank, top_k)
    if print_details:  # one answer: a flat list over its tokens, as TransformerLens prints it
        print("Ranks of the answer tokens:", [r[0] for r in ranks] if len(answers) == 1 else ranks)
    return ranks


def print_answer(model, logits: torch.Tensor, targets: torch.Tensor, rank: torch.Tensor, top_k: int) -> None:
    """One answer position: each answer token's rank, logit and probability, then the top_k tokens."""
    probs = logits.softmax(-1)
    print("Performance on answer token" + ("s:" if len(targets) > 1 else ":"))
    for i, (t, r) in enumerate(zip(targets, rank)):
        print(f"Rank: {int(r):<8} Logit: {float(logits[i, t]):5.2f} Prob: {float(probs[i, t]):6.2%} "
              f"Token: |{model.to_string(t[None])}|")
    top = probs[0].topk(min(top_k, probs.size(-1)))
    for k, (p, t) in enumerate(zip(top.values, top.indices)):
        print(f"Top {k}th token. Logit: {float(logits[0, t]):5.2f} Prob: {float(p):6.2%} Token: |{model.to_string(t[None])}|")
