"""Hard attention: a weighting (model/attention.py's second plug point) that gives each query exactly one key.

It is a research variant, kept out of the learner's files: it registers itself as the weighting "hard"
(model/__init__.py imports this file), reads its options from the nested `hard_attention` config
(model/config.py HardAttentionConfig) and, with the REINFORCE estimator, trains through the general
auxiliary-loss mechanism (model/layers.py AuxiliaryLoss) that the families' loss asks.
"""

import torch
import torch.nn.functional as F

from model.attention import WEIGHTINGS, Weighting, register
from model.config import ConfigError, HardAttentionConfig
from model.layers import AuxiliaryLoss


@register(WEIGHTINGS, "hard")
class Hard(Weighting, AuxiliaryLoss):
    """Hard attention: each query takes the value of exactly one key (a one-hot row of weights).

    Choosing is not differentiable, so training uses an estimator (temperature tau):
    - `gumbel`: straight-through Gumbel-softmax. The forward pass picks argmax(scores + Gumbel noise),
      a sample from softmax(scores); the backward pass uses the gradient of softmax((scores + noise) / tau).
    - `straight_through`: the forward pass picks argmax(scores); the backward pass uses softmax(scores / tau).
    - `reinforce`: the forward pass samples a key from p = softmax(scores / tau); no gradient flows
      through the choice. The scores learn from the score-function estimator (Williams, 1992; Xu et
      al., 2015): the family's loss hands the per-sequence losses to `auxiliary_loss` (`reinforce_term`),
      whose gradient is sum_b w_b (loss_b - baseline) grad log p(choices of b), minus an entropy bonus.
    At evaluation `eval` picks the argmax or a sample (Gumbel-max). Masked keys (score -inf) are
    never chosen; a row whose keys are all masked gets zero weights.
    """

    def __init__(self, options: HardAttentionConfig | None = None):
        super().__init__()
        options = options or HardAttentionConfig()
        self.temperature, self.estimator, self.eval_mode = options.temperature, options.estimator, options.eval
        self.log_prob = self.entropy = None  # (B,) of the last training forward pass (reinforce)
        if self.estimator == "reinforce":
            self.use_baseline = options.baseline != "none"
            self.momentum = options.baseline_momentum
            self.entropy_weight = options.entropy
            self.register_buffer("baseline", torch.tensor(float("nan")))  # nan: no step seen yet

    @classmethod
    def from_config(cls, config) -> "Hard":
        """The hard weighting with the model config's `hard_attention` options."""
        return cls(config.hard_attention)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        has_key = scores.isfinite().any(dim=-1, keepdim=True)  # False for rows with every key masked
        dtype, scores = scores.dtype, scores.float().masked_fill(~has_key, 0.0)
        if self.training and self.estimator == "reinforce":
            return self.sample_for_reinforce(scores, has_key).to(dtype)
        noisy = self.training and self.estimator == "gumbel" or not self.training and self.eval_mode == "sample"
        if noisy:  # Gumbel(0, 1) noise: argmax(scores + noise) is a sample from softmax(scores)
            scores = scores + gumbel_noise(scores)
        choice = F.one_hot(scores.argmax(dim=-1), scores.size(-1)).to(scores.dtype)  # (B, nh, T, S)
        if self.training and torch.is_grad_enabled():
            soft = F.softmax(scores / self.temperature, dim=-1)
            choice = choice + (soft - soft.detach())  # the value of the choice, the gradient of soft
        return (choice * has_key).to(dtype)

    def sample_for_reinforce(self, scores: torch.Tensor, has_key: torch.Tensor) -> torch.Tensor:
        """One-hot sample from softmax(scores / tau); keep each sequence's log-probability and entropy."""
        log_p = F.log_softmax(scores / self.temperature, dim=-1)  # (B, nh, T, S)
        index = (log_p.detach() + gumbel_noise(log_p)).argmax(dim=-1, keepdim=True)  # (B, nh, T, 1)
        real = has_key.squeeze(-1)  # (B, nh, T): rows with a key to choose
        if torch.is_grad_enabled():
            chosen = log_p.gather(-1, index).squeeze(-1) * real
            entropy = -(log_p.exp() * log_p.masked_fill(log_p == float("-inf"), 0.0)).sum(-1) * real
            self.log_prob, self.entropy = chosen.flatten(1).sum(1), entropy.flatten(1).sum(1)  # (B,)
        choice = torch.zeros_like(scores).scatter_(-1, index, 1.0)  # (B, nh, T, S), no gradient
        return choice * has_key

    def has_auxiliary_loss(self) -> bool:
        """Whether the last forward pass sampled choices that REINFORCE must train (a training pass)."""
        return self.log_prob is not None

    def auxiliary_loss(self, seq_loss: torch.Tensor, seq_weight: torch.Tensor) -> torch.Tensor:
        """The REINFORCE surrogate of the last forward pass (AuxiliaryLoss): see reinforce_term."""
        return self.reinforce_term(seq_loss, seq_weight)

    def reinforce_term(self, seq_loss: torch.Tensor, seq_weight: torch.Tensor) -> torch.Tensor:
        """Surrogate whose gradient is the REINFORCE estimate for the last forward pass; its value is 0.

        seq_loss (B,): each sequence's mean loss (minus the reward); seq_weight (B,): its share of the
        batch loss. Updates the moving-average baseline (after use: the estimate stays unbiased).
        """
        log_prob, entropy = self.log_prob, self.entropy
        self.log_prob = self.entropy = None
        seq_loss = seq_loss.detach().float()
        first = self.baseline.isnan()  # no step seen yet: no baseline (tensor ops, no Python branch: compiles)
        baseline = torch.where(first, 0.0, self.baseline) if self.use_baseline else 0.0
        advantage = seq_loss - baseline
        term = (seq_weight * advantage * log_prob).sum() - self.entropy_weight * (seq_weight * entropy).sum()
        if self.use_baseline:
            batch_mean = (seq_weight * seq_loss).sum() / seq_weight.sum()
            # a new tensor, not copy_: compiled (AOT autograd) backward passes may recompute the advantage
            # from the buffer after an in-place update, with the new baseline in place of the one used
            self.baseline = torch.where(first, batch_mean, self.momentum * baseline + (1 - self.momentum) * batch_mean)
        return term - term.detach()


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like `like`: argmax(logits + noise) is a sample from softmax(logits)."""
    uniform = torch.rand_like(like, dtype=torch.float).clamp_(min=torch.finfo(torch.float).tiny)
    return -torch.log(-torch.log(uniform))


def check_options_apply(config) -> None:
    """A ConfigError for a hard_attention_* option changed from its default where nothing would read it.

    Checked for the settings of a new run (train.py), not in the config itself: a checkpoint that holds
    such an option still loads (the option changes nothing).
    """
    defaults = HardAttentionConfig()
    changed = [name for name in HardAttentionConfig.__dataclass_fields__
               if getattr(config.hard_attention, name) != getattr(defaults, name)]
    hard = "hard" in (config.attn_weighting, config.cross_attn_weighting)
    for name in changed:
        if not hard:
            raise ConfigError(f"hard_attention_{name} applies to hard attention only, and no attention here is hard; "
                              "set attn_weighting=hard (or cross_attn_weighting=hard) or drop it.")
        if name in HardAttentionConfig.reinforce_only and config.hard_attention.estimator != "reinforce":
            raise ConfigError(f"hard_attention_{name} applies to hard_attention_estimator=reinforce only, not "
                              f"{config.hard_attention.estimator!r}; set the estimator to reinforce or drop it.")
