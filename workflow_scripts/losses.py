"""Training losses as pure functions of per-sequence log-prob statistics (METHODS.md).

Each loss takes a `Stats` (summed log-probs and token counts of the policy, and of the
reference where the method has one), the run's hyper-parameters and the method's state, and
returns the scalar loss, metrics and the new state. Shapes: chosen [B], negatives [B, m].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

EPS = 1e-8


@dataclass
class Stats:
    chosen: torch.Tensor
    chosen_n: torch.Tensor
    negatives: torch.Tensor
    negatives_n: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_negatives: torch.Tensor | None = None


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]
    state: torch.Tensor | None = None


def sft_loss(s: Stats, hp: dict, state=None) -> LossOutput:
    """Negative log-likelihood of the chosen responses, averaged over their tokens."""
    loss = -s.chosen.sum() / s.chosen_n.sum().clamp(min=1)
    return LossOutput(loss, {"logps/chosen": s.chosen.mean().item()})


def dpo_loss(s: Stats, hp: dict, state=None) -> LossOutput:
    """Sigmoid DPO on (chosen, first negative): -logsigmoid(beta * (margin_w - margin_l))."""
    chosen_reward = s.chosen - s.ref_chosen
    rejected_reward = s.negatives[:, 0] - s.ref_negatives[:, 0]
    logits = chosen_reward - rejected_reward
    loss = -F.logsigmoid(hp["beta"] * logits).mean()
    return LossOutput(loss, {
        "rewards/chosen": hp["beta"] * chosen_reward.mean().item(),
        "rewards/rejected": hp["beta"] * rejected_reward.mean().item(),
        "rewards/accuracy": (logits > 0).float().mean().item(),
        "logps/chosen": s.chosen.mean().item(),
        "logps/rejected": s.negatives[:, 0].mean().item(),
    })


def dft_update(scores: torch.Tensor, u_old: torch.Tensor, gamma: float) -> torch.Tensor:
    """Moving-average estimate u_i = logaddexp(log(1-gamma) + u_old, log(gamma) + lse_j(s_ij) - log m)."""
    m = scores.shape[1]
    w = math.log(gamma) + torch.logsumexp(scores.detach(), dim=1) - math.log(m)
    if gamma == 1:
        return w
    return torch.logaddexp(math.log(1.0 - gamma) + u_old, w)


def _dft_common(chosen, negatives, scores, u_old, gamma) -> LossOutput:
    u = dft_update(scores, u_old, gamma)
    weights = torch.exp(scores.detach() - u[:, None])
    neg_term = (weights * negatives).mean(dim=1)
    loss = (-chosen + neg_term).mean()
    return LossOutput(loss, {
        "u": u.mean().item(),
        "weight": weights.mean().item(),
        "score": scores.detach().mean().item(),
        "logps/chosen": chosen.mean().item(),
        "logps/negatives": negatives.mean().item(),
    }, u.detach())


def dft_loss(s: Stats, hp: dict, state: torch.Tensor) -> LossOutput:
    """DFT: s_ij = l(y'_ij)/tau - l_ref(y'_ij); loss = mean_i[-l(y_i) + 1/m sum_j sg(e^{s_ij-u_i}) l(y'_ij)]."""
    scores = s.negatives / hp["tau"] - s.ref_negatives
    return _dft_common(s.chosen, s.negatives, scores, state, hp["gamma"])


def dft2_loss(s: Stats, hp: dict, state: torch.Tensor) -> LossOutput:
    """DFT2 (reference-free): the same on mean log-probs, s_ij = lbar(y'_ij)/tau."""
    chosen = s.chosen / (s.chosen_n + EPS)
    negatives = s.negatives / (s.negatives_n + EPS)
    return _dft_common(chosen, negatives, negatives / hp["tau"], state, hp["gamma"])


@dataclass(frozen=True)
class Method:
    loss: Callable[[Stats, dict, torch.Tensor | None], LossOutput]
    n_negatives: Callable[[dict], int]   # negatives per example in one step
    needs_ref: bool
    stateful: bool = False               # keeps a per-example state (DFT's u)


METHODS: dict[str, Method] = {
    "sft": Method(sft_loss, lambda hp: 0, needs_ref=False),
    "dpo": Method(dpo_loss, lambda hp: 1, needs_ref=True),
    "dft": Method(dft_loss, lambda hp: hp["m"], needs_ref=True, stateful=True),
    "dft2": Method(dft2_loss, lambda hp: hp["m"], needs_ref=False, stateful=True),
}


def negative_columns(method: str, hp: dict, epoch: int) -> list[int]:
    """Negative columns used in an epoch: e*m..(e+1)*m-1 with `sample: true`, else 0..m-1."""
    m = METHODS[method].n_negatives(hp)
    start = epoch * m if hp.get("sample") else 0
    return list(range(start, start + m))


def negatives_required(method: str, hp: dict) -> int:
    """How many negatives per example the data must hold for the whole run."""
    m = METHODS[method].n_negatives(hp)
    return m * hp["epochs"] if hp.get("sample") else m
