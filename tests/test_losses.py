"""Losses against independent float64 implementations written from METHODS.md."""
import math

import numpy as np
import pytest
import torch

from workflow_scripts.encoding import sequence_logps
from workflow_scripts.losses import METHODS, Stats, dft2_loss, dft_loss, dpo_loss, negative_columns, sft_loss


def random_stats(b=5, m=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_c = torch.randint(1, 20, (b,), generator=g).double()
    n_n = torch.randint(1, 20, (b, m), generator=g).double()
    return Stats(
        chosen=(-torch.rand(b, generator=g, dtype=torch.float64) * 30).requires_grad_(),
        chosen_n=n_c,
        negatives=(-torch.rand(b, m, generator=g, dtype=torch.float64) * 30).requires_grad_(),
        negatives_n=n_n,
        ref_chosen=-torch.rand(b, generator=g, dtype=torch.float64) * 30,
        ref_negatives=-torch.rand(b, m, generator=g, dtype=torch.float64) * 30,
    )


def np_(t):
    return t.detach().numpy().astype(np.float64)


def ref_dft(chosen, negs, scores, u_old, gamma):
    """Per example, with explicit loops: value, gradient coefficients and new u."""
    b, m = negs.shape
    loss, u_new = 0.0, np.zeros(b)
    grad_c, grad_n = np.zeros(b), np.zeros((b, m))
    for i in range(b):
        w = math.log(gamma) + math.log(sum(math.exp(s) for s in scores[i]) / m)
        u = w if gamma == 1 else math.log((1 - gamma) * math.exp(u_old[i]) + math.exp(w))
        u_new[i] = u
        weights = [math.exp(scores[i, j] - u) for j in range(m)]
        loss += (-chosen[i] + sum(weights[j] * negs[i, j] for j in range(m)) / m) / b
        grad_c[i] = -1 / b
        grad_n[i] = np.array(weights) / m / b
    return loss, u_new, grad_c, grad_n


@pytest.mark.parametrize("gamma", [0.85, 1.0])
def test_dft_two_consecutive_steps_match_reference(gamma):
    hp = {"tau": 0.7, "gamma": gamma}
    u = torch.zeros(5, dtype=torch.float64)
    u_ref = np.zeros(5)
    for step in range(2):
        s = random_stats(seed=step)
        out = dft_loss(s, hp, u)
        out.loss.backward()
        scores = np_(s.negatives) / hp["tau"] - np_(s.ref_negatives)
        loss, u_ref, grad_c, grad_n = ref_dft(np_(s.chosen), np_(s.negatives), scores, u_ref, gamma)
        assert out.loss.item() == pytest.approx(loss, rel=1e-12)
        np.testing.assert_allclose(np_(out.state), u_ref, rtol=1e-12)
        np.testing.assert_allclose(np_(s.chosen.grad), grad_c, rtol=1e-12)
        np.testing.assert_allclose(np_(s.negatives.grad), grad_n, rtol=1e-12)
        u = out.state


def test_dft2_uses_mean_logps_and_no_reference():
    hp = {"tau": 0.3, "gamma": 0.9}
    s = random_stats(seed=3)
    s.ref_negatives = None
    u_old = torch.full((5,), -0.5, dtype=torch.float64)
    out = dft2_loss(s, hp, u_old)
    out.loss.backward()
    c = np_(s.chosen) / (np_(s.chosen_n) + 1e-8)
    n = np_(s.negatives) / (np_(s.negatives_n) + 1e-8)
    loss, u_ref, grad_c, grad_n = ref_dft(c, n, n / hp["tau"], np_(u_old), hp["gamma"])
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(np_(out.state), u_ref, rtol=1e-12)
    np.testing.assert_allclose(np_(s.chosen.grad), grad_c / (np_(s.chosen_n) + 1e-8), rtol=1e-10)
    np.testing.assert_allclose(np_(s.negatives.grad), grad_n / (np_(s.negatives_n) + 1e-8), rtol=1e-10)


def test_dpo_matches_hand_computation():
    s = random_stats(seed=4)
    beta = 0.1
    out = dpo_loss(s, {"beta": beta}, None)
    out.loss.backward()
    margin = (np_(s.chosen) - np_(s.ref_chosen)) - (np_(s.negatives)[:, 0] - np_(s.ref_negatives)[:, 0])
    expected = np.mean([math.log1p(math.exp(-beta * x)) for x in margin])
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    sig = 1 / (1 + np.exp(beta * margin))  # d/dx -logsigmoid(beta x) = -beta * sigmoid(-beta x)
    np.testing.assert_allclose(np_(s.chosen.grad), -beta * sig / len(margin), rtol=1e-10)
    np.testing.assert_allclose(np_(s.negatives.grad)[:, 0], beta * sig / len(margin), rtol=1e-10)
    assert np.all(np_(s.negatives.grad)[:, 1:] == 0)
    assert out.metrics["rewards/accuracy"] == pytest.approx(np.mean(margin > 0))


def test_sft_is_token_mean_nll():
    s = random_stats(seed=5)
    out = sft_loss(s, {}, None)
    assert out.loss.item() == pytest.approx(-np_(s.chosen).sum() / np_(s.chosen_n).sum(), rel=1e-12)


def test_sequence_logps_against_full_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 3:], mask[1, 1:5], mask[2, 6] = True, True, True
    got, n = sequence_logps(logits, ids, mask)
    full = torch.log_softmax(logits, -1)
    for row in range(3):
        expected = sum(full[row, t - 1, ids[row, t]].item() for t in range(1, 7) if mask[row, t])
        assert got[row].item() == pytest.approx(expected, rel=1e-12)
        assert n[row].item() == int(mask[row, 1:].sum())


def test_negative_columns_per_epoch():
    hp = {"m": 2, "sample": True, "epochs": 2}
    assert negative_columns("dft", hp, 0) == [0, 1]
    assert negative_columns("dft", hp, 1) == [2, 3]
    assert negative_columns("dft", dict(hp, sample=False), 1) == [0, 1]
    assert negative_columns("dpo", {}, 3) == [0]


def test_config_method_tables_agree_with_the_loss_registry():
    from workflow_scripts.config import METHOD_KEYS, NEEDS_REF

    assert set(METHOD_KEYS) == set(METHODS) == set(NEEDS_REF)
    assert all(NEEDS_REF[k] == METHODS[k].needs_ref for k in METHODS)
