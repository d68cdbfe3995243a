"""Patching over a dataset of N clean/corrupted pairs, with per-example results and their statistics.

    clean, corrupted, last = pad_pairs(clean_prompts, corrupted_prompts)       # (N, T), (N, T), (N,)
    rows = torch.arange(len(last))
    metric = lambda logits: logits[rows, last, right] - logits[rows, last, wrong]   # (N,): one value per pair
    result = patch_pairs(model, clean, corrupted, metric, "attn_head_out_all_pos")  # PatchingResult
    result.mean(), result.stderr(), result.bootstrap_ci(), result.permutation_pvalue()   # (layer, head) each
    result.normalized().mean(-1)     # (patched - corrupted) / (clean - corrupted): 0 = no effect, 1 = clean restored
    attribution_pairs(model, clean, corrupted, metric, "attn_head_out_all_pos")     # the same, by gradients

The metric returns one value per example (N,); every patch runs the whole batch, so per-example
values cost nothing extra (TransformerLens 4.3's reduce="none", baseline=True). Prompts of different
lengths are right-padded: in a causal model no position reads a later one, so padding changes nothing
before each prompt's last token, which the metric reads (`last`). Left-padded batches (every last token at
-1: model.to_tokens(texts, padding_side="left", return_attention_mask=True)) take `attention_mask=`.
"""

import itertools
from dataclasses import dataclass

import torch

from lens.patching import KINDS, activation_patch, attribution_patch, kind_sites
from lens.cache import ActivationCache, LensError, get_stack

ALTERNATIVES = ("two-sided", "greater", "less")


def pad_pairs(clean_prompts, corrupted_prompts, pad_token: int = 0):
    """Right-pad N pairs of token lists: (clean (N, T), corrupted (N, T), last (N,) index of each last token)."""
    if len(clean_prompts) != len(corrupted_prompts) or not clean_prompts:
        raise LensError(f"give as many corrupted prompts as clean ones (at least one); got {len(clean_prompts)} "
                        f"and {len(corrupted_prompts)}.")
    for i, (a, b) in enumerate(zip(clean_prompts, corrupted_prompts)):
        if len(a) != len(b) or not len(a):
            raise LensError(f"pair {i}: the clean prompt has {len(a)} tokens and the corrupted one {len(b)}; a pair "
                            "must have the same number of tokens (at least one) so that positions correspond.")
    T = max(len(a) for a in clean_prompts)
    pad = lambda prompts: torch.tensor([list(p) + [pad_token] * (T - len(p)) for p in prompts])  # noqa: E731
    last = torch.tensor([len(p) - 1 for p in clean_prompts])
    return pad([list(map(int, p)) for p in clean_prompts]), pad([list(map(int, p)) for p in corrupted_prompts]), last


def per_example(metric, n: int):
    """metric(logits) -> (n,) values, checked; a LensError for any other shape."""
    def values(logits: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(metric(logits))
        if out.shape != (n,):
            raise LensError(f"the metric returned shape {tuple(out.shape)}; over a dataset it must return one value per "
                            f"example, ({n},) (e.g. logits[rows, last, right] - logits[rows, last, wrong]).")
        return out
    return values


@dataclass
class PatchingResult:
    """Per-example patching values (*sites, N), with the unpatched corrupted and clean metrics (N,)."""

    values: torch.Tensor
    baseline: torch.Tensor  # the corrupted run's metric per example
    clean: torch.Tensor  # the clean run's metric per example
    axis_names: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return self.values.size(-1)

    def mean(self) -> torch.Tensor:
        """Mean over examples, per site."""
        return self.values.mean(-1)

    def stderr(self) -> torch.Tensor:
        """Standard error of the mean (unbiased std / sqrt(N)), per site; needs N >= 2."""
        if self.n < 2:
            raise LensError("a standard error needs at least 2 examples.")
        return self.values.std(-1) / self.n ** 0.5

    def effect(self) -> torch.Tensor:
        """values - corrupted metric: what each patch changes, per example."""
        return self.values - self.baseline

    def normalized(self) -> torch.Tensor:
        """(values - corrupted) / (clean - corrupted) per example: 0 no effect, 1 the clean metric restored.

        An example whose clean and corrupted metrics are equal has no scale: its values are nan."""
        gap = self.clean - self.baseline
        return self.effect() / gap.masked_fill(gap == 0, float("nan"))

    def bootstrap_ci(self, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
                     of_effect: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Percentile bootstrap interval (low, high) of the mean over examples, per site (resampled with a seeded
        generator: the same call gives the same interval)."""
        if not 0 < confidence < 1 or n_resamples < 1:
            raise LensError(f"confidence must be in (0, 1) and n_resamples >= 1; got {confidence}, {n_resamples}.")
        data = (self.effect() if of_effect else self.values).double()
        draws = torch.randint(0, self.n, (n_resamples, self.n), generator=torch.Generator().manual_seed(seed))
        means = data[..., draws].mean(-1)  # (*sites, n_resamples)
        alpha = (1 - confidence) / 2
        low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=means.dtype), dim=-1)
        return low.to(self.values.dtype), high.to(self.values.dtype)

    def permutation_pvalue(self, n_permutations: int = 1000, seed: int = 0,
                           alternative: str = "two-sided") -> torch.Tensor:
        """Sign-flip permutation p-value that the mean effect is zero, per site: exact (all 2^N sign patterns)
        for N <= 12, else (hits + 1) / (n_permutations + 1) over random patterns."""
        if alternative not in ALTERNATIVES:
            raise LensError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}.")
        effects = self.effect().double()
        if self.n <= 12:
            signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=self.n)), dtype=effects.dtype)
        else:
            draws = torch.randint(0, 2, (n_permutations, self.n), generator=torch.Generator().manual_seed(seed))
            signs = draws.to(effects.dtype) * 2 - 1
        observed = effects.mean(-1, keepdim=True)
        null = effects @ signs.T / self.n  # (*sites, patterns)
        tie = observed.abs() * 1e-12  # the same mean summed in another order
        hits = {"two-sided": null.abs() >= observed.abs() - tie, "greater": null >= observed - tie,
                "less": null <= observed + tie}[alternative].sum(-1).to(effects.dtype)
        p = hits / len(signs) if self.n <= 12 else (hits + 1) / (n_permutations + 1)
        return p.to(self.values.dtype)


def axis_names(kind: str) -> tuple[str, ...]:
    """The names of a kind's table dims (before the examples' dim)."""
    return {(0,): ("layer", "head" if "head" in kind else "pos"), (1, 0): ("layer", "pos", "head"),
            (0, 1): ("layer", "head", "dest_pos")}[KINDS[kind][1]]


def sites_table(model, clean_cache, kind: str, values: list[torch.Tensor]) -> torch.Tensor:
    """Per-site (N,) values laid out as the kind's table, (layer, ..., N)."""
    indices, _ = kind_sites(model, kind, clean_cache)
    shape = [max(ix[d] for ix in indices) + 1 for d in range(len(indices[0]))]
    table = torch.zeros(*shape, values[0].numel())
    for index, value in zip(indices, values):
        table[index] = value.float()
    return table


def endpoints(model, clean_tokens, corrupted_tokens, metric, attention_mask=None):
    """(clean cache, clean metric (N,), corrupted metric (N,)) after checking the two batches match."""
    if not get_stack(model).causal:
        raise LensError("patching over padded pairs needs a causal (decoder-only) model: a bidirectional one "
                        "would read the padding.")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise LensError(f"clean tokens {tuple(clean_tokens.shape)} and corrupted tokens "
                        f"{tuple(corrupted_tokens.shape)} differ; pad the pairs together (pad_pairs).")
    with torch.no_grad():
        masked = {} if attention_mask is None else {"attention_mask": attention_mask}
        (clean_logits, _), clean_cache = model.run_with_cache(clean_tokens, **masked)
        corrupted_logits, _ = model(corrupted_tokens, **masked)
    return clean_cache, metric(clean_logits).float(), metric(corrupted_logits).float()


def patch_pairs(model, clean_tokens, corrupted_tokens, patching_metric, kind: str,
                batch_size: int | None = None, attention_mask: torch.Tensor | None = None) -> PatchingResult:
    """Exact patching of every site of `kind` (lens/patching.py KINDS) on N pairs: values (layer, ..., N)."""
    metric = per_example(patching_metric, clean_tokens.size(0))
    clean_cache, clean, corrupted = endpoints(model, clean_tokens, corrupted_tokens, metric, attention_mask)
    _, patches = kind_sites(model, kind, clean_cache)
    collected = []

    def mean_of_examples(logits: torch.Tensor) -> torch.Tensor:  # activation_patch calls it once per patch, in order
        values = metric(logits).detach().float()
        collected.append(values)
        return values.mean()

    activation_patch(model, corrupted_tokens, clean_cache, mean_of_examples, patches, batch_size,
                     attention_mask=attention_mask)
    return PatchingResult(sites_table(model, clean_cache, kind, collected), corrupted, clean, axis_names(kind))


def attribution_pairs(model, clean_tokens, corrupted_tokens, patching_metric, kind: str,
                      attention_mask: torch.Tensor | None = None) -> PatchingResult:
    """Attribution patching of `kind` on N pairs, per example: values = corrupted metric + the gradient estimate
    of each patch's effect, so that mean(), effect() and normalized() read as patch_pairs' do."""
    n = clean_tokens.size(0)
    metric = per_example(patching_metric, n)
    clean_cache, clean, corrupted = endpoints(model, clean_tokens, corrupted_tokens, metric, attention_mask)
    cache = ActivationCache(clean_cache, model)
    # rows of a batch do not interact: the gradient of example i's metric reaches only row i
    estimates = [attribution_patch(model, corrupted_tokens, cache, lambda logits, i=i: metric(logits)[i], [kind],
                                   attention_mask=attention_mask)[kind] for i in range(n)]
    return PatchingResult(torch.stack(estimates, -1) + corrupted, corrupted, clean, axis_names(kind))
