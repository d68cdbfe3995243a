"""Hard attention: a weighting (model/attention.py's second plug point) that gives each query exactly one key.

It is a research variant, kept out of the learner's files: it registers itself as the weighting "hard"
(model/__init__.py imports this file), reads its options from the nested `hard_attention` config
(model/config.py HardAttentionConfig) and, with the REINFORCE estimator, trains through the general
auxiliary-loss mechanism (model/layers.py AuxiliaryLoss) that the families' loss asks.
"""

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import WEIGHTINGS, Weighting, register
from model.config import ConfigError, HardAttentionConfig
from model.layers import AuxiliaryLoss
from model.reinforce import ValueHead, leave_one_out, reach_of, rewards


@register(WEIGHTINGS, "hard")
class Hard(Weighting, AuxiliaryLoss):
    """Hard attention: each query takes the value of exactly one key (a one-hot row of weights).

    Choosing is not differentiable, so training uses an estimator (temperature tau):
    - `gumbel`: straight-through Gumbel-softmax. The forward pass picks argmax(scores + Gumbel noise),
      a sample from softmax(scores); the backward pass uses the gradient of softmax((scores + noise) / tau).
    - `straight_through`: the forward pass picks argmax(scores); the backward pass uses softmax(scores / tau).
    - `reinforce`: the forward pass samples a key from p = softmax(scores / tau); no gradient flows
      through the choice. The scores learn from the score-function estimator (Williams, 1992; Xu et
      al., 2015): the family's loss hands each target's loss to `auxiliary_loss` (`reinforce_term`),
      whose gradient is sum_c (R_c - b_c) grad log p(choice c) / targets, minus an entropy bonus: R_c
      the losses choice c can change (`credit`), b_c a baseline independent of it (model/reinforce.py).
    At evaluation `eval` picks the argmax or a sample (Gumbel-max). Masked keys (score -inf) are
    never chosen; a row whose keys are all masked gets zero weights.
    """

    def __init__(self, options: HardAttentionConfig | None = None, n_head: int = 1):
        super().__init__()
        options = options or HardAttentionConfig()
        self.temperature, self.estimator, self.eval_mode = options.temperature, options.estimator, options.eval
        self.log_prob = self.entropy = self.value = None  # (B, Q) of the last training forward pass (reinforce)
        if self.estimator == "reinforce":
            self.baseline_kind, self.credit = options.baseline, options.credit
            self.samples, self.normalize = options.samples, options.normalize
            self.copies_per_sequence = self.samples  # the training step repeats each sequence (baseline 'samples')
            self.momentum, self.entropy_weight = options.baseline_momentum, options.entropy
            self.register_buffer("baseline", torch.tensor(float("nan")))  # nan: no step seen yet
            if self.normalize:
                self.register_buffer("advantage_rms", torch.tensor(float("nan")))
            if self.baseline_kind == "learned":
                self.value_head = ValueHead(n_head)

    @classmethod
    def from_config(cls, config) -> "Hard":
        """The hard weighting with the model config's `hard_attention` options."""
        return cls(config.hard_attention, config.n_head)

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
        """One-hot sample from softmax(scores / tau); keep each query's log-probability and entropy (heads summed)."""
        log_p = F.log_softmax(scores / self.temperature, dim=-1)  # (B, nh, T, S)
        index = (log_p.detach() + gumbel_noise(log_p)).argmax(dim=-1, keepdim=True)  # (B, nh, T, 1)
        real = has_key.squeeze(-1)  # (B, nh, T): rows with a key to choose
        if torch.is_grad_enabled():
            chosen = log_p.gather(-1, index).squeeze(-1) * real
            entropy = -(log_p.exp() * log_p.masked_fill(log_p == float("-inf"), 0.0)).sum(-1) * real
            self.log_prob, self.entropy = chosen.sum(1), entropy.sum(1)  # (B, T): a query's heads choose together
            if self.baseline_kind == "learned":
                self.value = self.value_head(self.value_head.features(log_p))  # (B, T)
        choice = torch.zeros_like(scores).scatter_(-1, index, 1.0)  # (B, nh, T, S), no gradient
        return choice * has_key

    def has_auxiliary_loss(self) -> bool:
        """Whether the last forward pass sampled choices that REINFORCE must train (a training pass)."""
        return self.log_prob is not None

    def auxiliary_loss(self, model: nn.Module, token_loss: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The REINFORCE surrogate of the last forward pass (AuxiliaryLoss): see reinforce_term."""
        return self.reinforce_term(token_loss, real, reach_of(model, self))

    def reinforce_term(self, token_loss: torch.Tensor, real: torch.Tensor, reach: str = "all") -> torch.Tensor:
        """Surrogate whose gradient is the REINFORCE estimate for the last forward pass; its value is 0.

        token_loss (B, T): each target's loss (the minus reward); real (B, T): whether it is scored; reach:
        which targets a choice can change (model/reinforce.py reach_of). The gradient is that of the mean
        loss over the real targets. Updates the running statistics after use.
        """
        log_prob, entropy, value = self.log_prob, self.entropy, self.value
        self.log_prob = self.entropy = self.value = None
        token_loss, n_targets = token_loss.detach().float(), real.sum().clamp(min=1)
        advantage, count, per_token = self.advantages(token_loss, real, reach, log_prob.size(1), value)
        if self.normalize:
            rms = advantage.square().sum().div(count.gt(0).sum().clamp(min=1)).sqrt()
            unset = self.advantage_rms.isnan()
            advantage = advantage / torch.where(unset, 1.0, self.advantage_rms).clamp(min=1e-8)
            self.advantage_rms = torch.where(unset, rms, self.momentum * self.advantage_rms + (1 - self.momentum) * rms)
        seq_weight = real.sum(1) / n_targets  # (B,) each sequence's share of the mean loss
        term = (advantage * log_prob).sum() / n_targets - self.entropy_weight * (seq_weight * entropy.sum(1)).sum()
        if value is not None:  # the value head's regression on each query's reward per token
            active = (count > 0).float()
            term = term + ((value - per_token).square() * active).sum() / active.sum().clamp(min=1)
        return term - term.detach()

    def advantages(self, token_loss: torch.Tensor, real: torch.Tensor, reach: str, n_queries: int,
                   value: torch.Tensor | None):
        """(advantage, count, reward per token) per query (B, Q); count: its target tokens in reach."""
        reach = {"query": reach, "own": "own", "sequence": "all"}[self.credit]
        reward, count = rewards(token_loss, real, reach, n_queries)
        per_token = reward / count.clamp(min=1)
        first = self.baseline.isnan()  # no step seen yet (tensor ops, no Python branch: compiles)
        if self.baseline_kind == "moving_average":
            baseline = count * torch.where(first, 0.0, self.baseline)
        elif self.baseline_kind in ("batch", "samples"):
            groups = per_token.size(0) // self.samples if self.baseline_kind == "samples" else 1
            baseline = leave_one_out(per_token, count, groups)
        elif self.baseline_kind == "learned":
            baseline = count * value.detach()
        else:
            baseline = torch.zeros_like(reward)
        batch_mean = reward.sum() / count.sum().clamp(min=1)
        # a new tensor, not copy_: compiled (AOT autograd) backward passes may recompute the advantage
        # from the buffer after an in-place update, with the new baseline in place of the one used
        self.baseline = torch.where(first, batch_mean, self.momentum * self.baseline + (1 - self.momentum) * batch_mean)
        return (reward - baseline) * (count > 0), count, per_token


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
