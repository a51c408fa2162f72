"""The math of PPO for RLHF as small pure functions, following Huang et al. 2024, "The N+ Implementation Details
of RLHF with PPO: A Case Study on TL;DR Summarization" (arXiv 2403.17031), and the setup of Ziegler et al. 2019,
"Fine-Tuning Language Models from Human Preferences" (arXiv 1909.08593).

Shapes: B = rollouts in a batch, T = response tokens (queries are not part of these tensors). `mask` is 1.0 on
real response tokens (up to and including the first EOS) and 0.0 on the padding that follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Log-prob written on padded positions so they are recognisable and contribute exp(0)=1 ratios (N+ detail: TRL's
# INVALID_LOGPROB); every loss below masks them out anyway.
INVALID_LOGPROB = 1.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (all of it, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked positions; Bessel-corrected like the reference implementation."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions (N+ details: advantage whitening, and optional reward whitening).

    For rewards `shift_mean=False` keeps the mean so the sign of the reward survives (Ziegler et al. 2019).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def first_true_index(bools: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B,) index of the first True per row, T when there is none."""
    T = bools.shape[-1]
    positions = torch.arange(T, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, T).min(dim=-1).values


def response_mask(responses: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Find where each response ends (N+ detail: truncate after the first EOS).

    responses (B, T) token ids -> mask (B, T) float, last index (B,) of the final real token, contains_eos (B,) bool.
    """
    is_eos = responses == eos_token_id  # (B, T)
    first_eos = first_true_index(is_eos)  # (B,); T when no EOS was emitted
    contains_eos = first_eos < responses.shape[1]
    last = torch.where(contains_eos, first_eos, responses.shape[1] - 1)  # EOS itself is part of the response
    positions = torch.arange(responses.shape[1], device=responses.device)
    mask = (positions[None, :] <= last[:, None]).float()  # (B, T)
    return mask, last, contains_eos


def apply_eos_penalty(scores: torch.Tensor, contains_eos: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract `penalty` from the score of responses that never emitted EOS (N+ detail: EOS trick).

    scores (B,), contains_eos (B,) bool -> (B,). Truncated responses would otherwise be rewarded by a reward model
    that never saw them; the paper replaces their score with a constant, subtracting keeps it scale-free.
    """
    return torch.where(contains_eos, scores, scores - penalty)


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k1 estimate of KL(pi || pi_ref) per token: log pi(y_t) - log pi_ref(y_t), zero on padding. (B, T)."""
    return (logprobs - ref_logprobs) * mask


def kl_penalized_rewards(scores: torch.Tensor, kl: torch.Tensor, last: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards R_t = -beta * KL_t, plus the reward model's score on the final token.

    Eq. 2 of Ziegler et al. 2019 / Sec. 3 of Huang et al. 2024. scores (B,), kl (B, T), last (B,) -> (B, T).
    """
    rewards = -kl_coef * kl
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16): A_t = sum_l (gamma lam)^l delta_{t+l},
    delta_t = r_t + gamma V_{t+1} - V_t, with V = 0 past the end of the response.

    rewards, values, mask (B, T) -> advantages (B, T), returns = advantages + values (B, T) (the value targets).
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    last_gae = torch.zeros_like(rewards[:, 0])  # (B,)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate objective (Schulman et al. 2017, Eq. 7), as a loss to minimise:
    L = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1-eps, 1+eps)), rho_t = pi(y_t) / pi_old(y_t).

    All inputs (B, T) -> (loss scalar, clip fraction scalar).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (N+ detail; PPO2 baselines): 0.5 mean_t max((V - R)^2, (clip(V, V_old +- eps) - R)^2).

    All inputs (B, T) -> (loss scalar, clip fraction scalar).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_sq = (values - returns) ** 2
    clipped_sq = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_sq, clipped_sq), mask)
    clipfrac = masked_mean((clipped_sq > unclipped_sq).float(), mask)
    return loss, clipfrac


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token) from logits (B, T, V) and tokens (B, T) -> (B, T).

    Logits are divided by the sampling temperature (N+ detail) so the log-probs match the distribution sampled from.
    """
    logits = logits.float() / temperature
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)  # avoids materialising the full (B, T, V) log_softmax


@dataclass
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019, Eq. 2 (Sec. 2.2): steer the observed KL towards `target` with a proportional controller,
    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2), beta_{t+1} = beta_t (1 + K_beta e_t), K_beta = n_steps / horizon.
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
