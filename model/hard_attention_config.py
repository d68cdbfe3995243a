"""The options of hard attention (attn_weighting='hard', model/hard_attention.py): one nested config that every
model config holds as `hard_attention`. It registers itself in the learner's config (model/transformer_config.py
OPTIONS), so the core declares the field without knowing the variant; on the command line, in config files and
in checkpoints each option is a flat key with the prefix `hard_attention_` (--hard_attention_estimator=reinforce:
model/options.py).
"""

import math
from dataclasses import dataclass

from model.rules import check_fields, flag, number, one_of, size
from model.transformer_config import OPTIONS
from weights.errors import ConfigError


@dataclass
class HardAttentionConfig:
    """The options of hard attention (attn_weighting='hard', model/hard_attention.py), nested in the model
    configs as `hard_attention`. On the command line and in checkpoints each is a flat key with the
    prefix `hard_attention_` (--hard_attention_estimator=reinforce): see model/options.py."""

    temperature: float = 1.0  # tau of the training estimator
    estimator: str = "gumbel"  # 'gumbel' (straight-through Gumbel-softmax), 'straight_through' or 'reinforce'
    eval: str = "argmax"  # at evaluation: 'argmax' or 'sample'
    # REINFORCE estimator only
    credit: str = "query"  # 'query': each choice gets the target losses it can change; 'own': its own target's
    # only (biased where a choice also changes later targets); 'sequence': its sequence's
    baseline: str = "batch"  # 'batch', 'moving_average', 'samples', 'learned' or 'none' (model/reinforce.py)
    baseline_momentum: float = 0.9  # decay per training step of the moving average (and of normalize's RMS)
    samples: int = 1  # each training sequence this many times per batch (with baseline='samples', RLOO)
    normalize: bool = False  # divide advantages by a running RMS of past steps' advantages
    entropy: float = 0.0  # weight of the entropy bonus on the sampling distribution

    estimators = ("gumbel", "straight_through", "reinforce")
    eval_modes = ("argmax", "sample")
    baselines = ("batch", "moving_average", "samples", "learned", "none")
    credits = ("query", "own", "sequence")
    reinforce_only = ("credit", "baseline", "baseline_momentum", "samples", "normalize", "entropy")
    rules = {  # messages name the flat keys (hard_attention_temperature)
        "temperature": number("must be > 0 and finite", above=0, below=math.inf),  # inf: -inf / inf = nan
        "estimator": one_of(estimators), "eval": one_of(eval_modes), "baseline": one_of(baselines),
        "credit": one_of(credits), "samples": size(), "normalize": flag(),
        "baseline_momentum": number("must be in [0, 1)", at_least=0, below=1),
        "entropy": number("must be >= 0 and finite", at_least=0, below=math.inf),
    }

    def __post_init__(self):
        check_fields(self, prefix="hard_attention_")
        if self.estimator == "reinforce" and (self.samples > 1) != (self.baseline == "samples"):
            raise ConfigError("hard_attention_baseline=samples and hard_attention_samples >= 2 go together "
                              f"(got {self.baseline!r} and {self.samples}); set both or neither.")


OPTIONS["hard_attention"] = HardAttentionConfig

__all__ = ["HardAttentionConfig"]
