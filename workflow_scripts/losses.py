"""Training losses as pure functions of per-token log-probs and masks (formulas in each docstring; the methods,
their recipes and upstream code: docs/methods.md).

Every loss takes a `Batch` (the policy's per-token log-probs of the label tokens and the response
masks, shaped [B, K, T] with K = 1 + negatives, column 0 the chosen response; the reference's
log-probs where the method has one), the run's hyper-parameters and the method's state, and
returns the scalar loss, metrics and the new state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

EPS = 1e-8


@dataclass
class Batch:
    logps: torch.Tensor                       # [B, K, T] per-token log-probs, zero off the mask
    mask: torch.Tensor                        # [B, K, T] response tokens
    ref_logps: torch.Tensor | None = None     # [B, K] summed, or [B, K, T] per token (Method.token_ref)
    edit_mask: torch.Tensor | None = None     # [B, K, T] DPO-BMC token-difference mask
    kl_logps: torch.Tensor | None = None      # [B, K] KTO: policy l(y) on mismatched (prompt, completion) pairs
    kl_ref_logps: torch.Tensor | None = None  # [B, K] the same under the reference
    labels: torch.Tensor | None = None        # [B] bool, KTO's unpaired data: is column 0 desirable?

    @property
    def sums(self) -> torch.Tensor:
        """l(y) for every response, [B, K]."""
        return (self.logps * self.mask).sum(-1)

    @property
    def means(self) -> torch.Tensor:
        """lbar(y) = l(y) / (n_tokens + 1e-8), [B, K]."""
        return self.sums / (self.mask.sum(-1).to(self.logps.dtype) + EPS)

    @property
    def ref_sums(self) -> torch.Tensor:
        return self.ref_logps if self.ref_logps.dim() == 2 else (self.ref_logps * self.mask).sum(-1)


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]
    state: torch.Tensor | None = None


def _token_nll(logps: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t m_t * w_t * CE_t / (sum_t m_t + 1e-8) over the micro-batch's tokens."""
    ce = -logps * mask
    if weights is not None:
        ce = ce * weights
    return ce.sum() / (mask.sum().to(logps.dtype) + EPS)


def sft_loss(b: Batch, hp: dict, state=None) -> LossOutput:
    """Negative log-likelihood of the chosen responses, averaged over their tokens."""
    loss = _token_nll(b.logps[:, 0], b.mask[:, 0])
    return LossOutput(loss, {"logps/chosen": b.sums[:, 0].mean().item()})


def dynft_loss(b: Batch, hp: dict, state=None) -> LossOutput:
    """Dynamic Fine-Tuning: token CE weighted by w_t = alpha * sg(p_t) + (1 - alpha); alpha 1 is the official loss."""
    logps, mask = b.logps[:, 0], b.mask[:, 0]
    p = logps.detach().exp()
    weights = hp["alpha"] * p + (1.0 - hp["alpha"])
    loss = _token_nll(logps, mask, weights)
    return LossOutput(loss, {"logps/chosen": b.sums[:, 0].mean().item(),
                             "token_prob": ((p * mask).sum() / mask.sum().clamp(min=1)).item()})


def _sigmoid_dpo(chosen, rejected, ref_chosen, ref_rejected, beta: float) -> LossOutput:
    chosen_reward = chosen - ref_chosen
    rejected_reward = rejected - ref_rejected
    logits = chosen_reward - rejected_reward
    loss = -F.logsigmoid(beta * logits).mean()
    return LossOutput(loss, {
        "rewards/chosen": beta * chosen_reward.mean().item(),
        "rewards/rejected": beta * rejected_reward.mean().item(),
        "rewards/accuracy": (logits > 0).float().mean().item(),
        "rewards/margin": beta * logits.mean().item(),
        "logps/chosen": chosen.mean().item(),
        "logps/rejected": rejected.mean().item(),
    })


def dpo_loss(b: Batch, hp: dict, state=None) -> LossOutput:
    """Sigmoid DPO on (chosen, first negative): -logsigmoid(beta * (margin_w - margin_l)).

    Also the loss of SPIN (rejected = the previous iteration's own generation, reference = that
    model) and of Step-Controlled DPO (pairs from a correct prefix).
    """
    s, r = b.sums, b.ref_sums
    return _sigmoid_dpo(s[:, 0], s[:, 1], r[:, 0], r[:, 1], hp["beta"])


def bmc_weights(logps: torch.Tensor, edit_mask: torch.Tensor, delta: float) -> torch.Tensor:
    """DPO-BMC token weights w_t = 1 + mask_t * min(1 / sg(p_t), delta)."""
    return 1.0 + edit_mask * torch.clamp(torch.exp(-logps.detach()), max=delta)


def dpo_bmc_loss(b: Batch, hp: dict, state=None) -> LossOutput:
    """DPO-BMC: sigmoid DPO on weighted scores sum_t w_t log p_t of (pseudo-winning, losing).

    With `bmc_weight_reference` (upstream) the reference's per-token log-probs are weighted the
    same way with the reference's own p_t; otherwise the reference enters as plain l_ref(y).
    """
    delta, pair = hp["delta"], slice(0, 2)
    logps, mask, edit = b.logps[:, pair], b.mask[:, pair], b.edit_mask[:, pair]
    scores = (logps * mask * bmc_weights(logps, edit, delta)).sum(-1)
    if hp["bmc_weight_reference"]:
        ref = b.ref_logps[:, pair]
        ref_scores = (ref * mask * bmc_weights(ref, edit, delta)).sum(-1)
    else:
        ref_scores = b.ref_sums[:, pair]
    out = _sigmoid_dpo(scores[:, 0], scores[:, 1], ref_scores[:, 0], ref_scores[:, 1], hp["beta"])
    out.metrics["edited_fraction"] = ((edit * mask).sum() / (mask.sum() + EPS)).item()
    return out


def simpo_loss(b: Batch, hp: dict, state=None) -> LossOutput:
    """SimPO: -logsigmoid(beta * (lbar(y_w) - lbar(y_l)) - gamma), gamma = beta * gamma_beta_ratio.

    SimPO-SFT (`sft_weight` > 0) adds sft_weight x the token-mean NLL of the chosen responses.
    """
    means = b.means
    margin = means[:, 0] - means[:, 1]
    loss = -F.logsigmoid(hp["beta"] * (margin - hp["gamma_beta_ratio"])).mean()
    metrics = {"rewards/accuracy": (margin > 0).float().mean().item(),
               "rewards/margin": hp["beta"] * margin.mean().item(),
               "logps/chosen": means[:, 0].mean().item(), "logps/rejected": means[:, 1].mean().item()}
    if hp.get("sft_weight"):  # simpo_sft (plain simpo does not read it)
        nll = _token_nll(b.logps[:, 0], b.mask[:, 0])
        loss = loss + hp["sft_weight"] * nll
        metrics["sft_nll"] = nll.item()
    return LossOutput(loss, metrics)


def kto_kl(b: Batch) -> torch.Tensor:
    """KTO's reference point before the cross-process mean: mean over the micro-batch's mismatched
    (prompt, completion) pairs of l(y') - l_ref(y'), detached (TRL KTOTrainer)."""
    return (b.kl_logps - b.kl_ref_logps).mean().detach()


def kto_loss(b: Batch, hp: dict, state=None) -> LossOutput:
    """KTO with z = max(0, KL): desirable examples lose w_d (1 - sigmoid(beta (r - z))), undesirable
    ones w_u (1 - sigmoid(beta (z - r))), r = l(y) - l_ref(y); the loss is the mean over all examples.

    Paired data: column 0 is desirable and column 1 undesirable (2B examples). Unpaired data: one
    completion per example, `b.labels` says which are desirable. `state` is the KL estimate already
    averaged over processes (the trainer gathers it); when absent the micro-batch's own is used.
    """
    kl = (kto_kl(b) if state is None else state).clamp(min=0)
    logps, ratios = b.sums, b.sums - b.ref_sums
    if b.labels is None:  # [chosen of every pair; rejected of every pair]
        logps, ratios = logps[:, :2].T.reshape(-1), ratios[:, :2].T.reshape(-1)
        desirable = torch.arange(len(ratios)) < len(ratios) // 2
    else:
        logps, ratios, desirable = logps[:, 0], ratios[:, 0], b.labels
    desirable = desirable.to(ratios.device)
    beta = hp["beta"]
    losses = torch.where(desirable, hp["desirable_weight"] * (1 - torch.sigmoid(beta * (ratios - kl))),
                         hp["undesirable_weight"] * (1 - torch.sigmoid(beta * (kl - ratios))))
    metrics = {"kl": kl.item(), "desirable_fraction": desirable.float().mean().item()}
    for name, where in (("chosen", desirable), ("rejected", ~desirable)):
        if where.any():
            metrics[f"rewards/{name}"] = beta * ratios[where].mean().item()
            metrics[f"logps/{name}"] = logps[where].mean().item()
    return LossOutput(losses.mean(), metrics)


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


def dft_loss(b: Batch, hp: dict, state: torch.Tensor) -> LossOutput:
    """DFT: s_ij = l(y'_ij)/tau - l_ref(y'_ij); loss = mean_i[-l(y_i) + 1/m sum_j sg(e^{s_ij-u_i}) l(y'_ij)]."""
    s = b.sums
    scores = s[:, 1:] / hp["tau"] - b.ref_sums[:, 1:]
    return _dft_common(s[:, 0], s[:, 1:], scores, state, hp["gamma"])


def dft2_loss(b: Batch, hp: dict, state: torch.Tensor) -> LossOutput:
    """DFT2 (reference-free): the same on mean log-probs, s_ij = lbar(y'_ij)/tau."""
    means = b.means
    return _dft_common(means[:, 0], means[:, 1:], means[:, 1:] / hp["tau"], state, hp["gamma"])


LOSSES: dict[str, Callable[[Batch, dict, torch.Tensor | None], LossOutput]] = {
    "sft": sft_loss,
    "dynft": dynft_loss,
    "dpo": dpo_loss,
    "scdpo": dpo_loss,
    "spin": dpo_loss,
    "dpo_bmc": dpo_bmc_loss,
    "simpo": simpo_loss,
    "simpo_sft": simpo_loss,
    "kto": kto_loss,
    "dft": dft_loss,
    "dft2": dft2_loss,
}
