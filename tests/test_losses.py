"""Losses against independent float64 implementations written from the papers' formulas (loops, numpy; see each loss's docstring)."""
import math

import numpy as np
import pytest
import torch

from workflow_scripts.methods import METHODS, negative_columns
from workflow_scripts.logprobs import token_logps
from workflow_scripts.losses import (
    LOSSES, Batch, dft2_loss, dft_loss, dpo_bmc_loss, dynft_loss, kto_loss, sft_loss, simpo_loss,
)


def random_batch(b=5, k=4, t=9, seed=0, ref="sums"):
    """Per-token log-probs [b, k, t] with ragged masks (every row keeps >= 1 token)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b, k), generator=g)
    starts = torch.randint(0, t, (b, k), generator=g).clamp(max=t - lengths)
    pos = torch.arange(t)
    mask = (pos >= starts[..., None]) & (pos < (starts + lengths)[..., None])
    logps = (-torch.rand(b, k, t, generator=g, dtype=torch.float64) * 4 * mask).requires_grad_()
    ref_tok = -torch.rand(b, k, t, generator=g, dtype=torch.float64) * 4 * mask
    batch = Batch(logps, mask, ref_tok if ref == "tokens" else ref_tok.sum(-1))
    batch.edit_mask = (torch.rand(b, k, t, generator=g) < 0.4).double() * mask
    batch.kl_logps = -torch.rand(b, k, generator=g, dtype=torch.float64) * 20
    batch.kl_ref_logps = -torch.rand(b, k, generator=g, dtype=torch.float64) * 20
    return batch


def np_(t):
    return t.detach().numpy().astype(np.float64)


def seq(batch):
    """(sums, counts, ref sums) with explicit loops."""
    lp, mask = np_(batch.logps), np_(batch.mask)
    b, k, t = lp.shape
    sums = np.array([[sum(lp[i, j, s] for s in range(t) if mask[i, j, s]) for j in range(k)] for i in range(b)])
    counts = mask.sum(-1)
    if batch.ref_logps is None:
        return sums, counts, None
    ref = np_(batch.ref_logps)
    return sums, counts, ref if ref.ndim == 2 else (ref * mask).sum(-1)


def seq_grad_to_tokens(batch, grad_seq):
    """d loss / d token log-prob from d loss / d l(y) (the same for every unmasked token)."""
    return grad_seq[..., None] * np_(batch.mask)


def ref_dft(chosen, negs, scores, u_old, gamma):
    """Per example: value, gradient coefficients w.r.t. chosen / negatives, and the new u."""
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
        batch = random_batch(seed=step)
        out = dft_loss(batch, hp, u)
        out.loss.backward()
        sums, _, ref = seq(batch)
        scores = sums[:, 1:] / hp["tau"] - ref[:, 1:]
        loss, u_ref, grad_c, grad_n = ref_dft(sums[:, 0], sums[:, 1:], scores, u_ref, gamma)
        assert out.loss.item() == pytest.approx(loss, rel=1e-12)
        np.testing.assert_allclose(np_(out.state), u_ref, rtol=1e-12)
        grad = seq_grad_to_tokens(batch, np.concatenate([grad_c[:, None], grad_n], 1))
        np.testing.assert_allclose(np_(batch.logps.grad), grad, rtol=1e-12, atol=1e-15)
        u = out.state


def test_dft2_uses_mean_logps_and_no_reference():
    hp = {"tau": 0.3, "gamma": 0.9}
    batch = random_batch(seed=3)
    batch.ref_logps = None
    u_old = torch.full((5,), -0.5, dtype=torch.float64)
    out = dft2_loss(batch, hp, u_old)
    out.loss.backward()
    sums, counts, _ = seq(batch)
    means = sums / (counts + 1e-8)
    loss, u_ref, grad_c, grad_n = ref_dft(means[:, 0], means[:, 1:], means[:, 1:] / hp["tau"], np_(u_old), hp["gamma"])
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(np_(out.state), u_ref, rtol=1e-12)
    grad = seq_grad_to_tokens(batch, np.concatenate([grad_c[:, None], grad_n], 1) / (counts + 1e-8))
    np.testing.assert_allclose(np_(batch.logps.grad), grad, rtol=1e-10, atol=1e-15)


def sigmoid_dpo_reference(chosen, rejected, ref_chosen, ref_rejected, beta):
    """(loss, d/d chosen, d/d rejected) of mean -log sigmoid(beta * margin)."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    loss = np.mean([math.log1p(math.exp(-beta * x)) for x in margin])
    coef = np.array([beta / (1 + math.exp(beta * x)) for x in margin]) / len(margin)
    return loss, -coef, coef, margin


@pytest.mark.parametrize("method", ["dpo", "scdpo", "spin"])
def test_dpo_family_matches_hand_computation(method):
    batch = random_batch(seed=4)
    beta = 0.1
    out = LOSSES[method](batch, {"beta": beta}, None)
    out.loss.backward()
    sums, _, ref = seq(batch)
    loss, g_c, g_r, margin = sigmoid_dpo_reference(sums[:, 0], sums[:, 1], ref[:, 0], ref[:, 1], beta)
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    grad_seq = np.zeros(sums.shape)
    grad_seq[:, 0], grad_seq[:, 1] = g_c, g_r
    np.testing.assert_allclose(np_(batch.logps.grad), seq_grad_to_tokens(batch, grad_seq), rtol=1e-10, atol=1e-15)
    assert out.metrics["rewards/accuracy"] == pytest.approx(np.mean(margin > 0))


@pytest.mark.parametrize("weight_reference", [True, False])
def test_dpo_bmc_weighted_scores(weight_reference):
    batch = random_batch(seed=6, k=2, ref="tokens")
    hp = {"beta": 0.05, "delta": 2.5, "bmc_weight_reference": weight_reference}
    out = dpo_bmc_loss(batch, hp)
    out.loss.backward()
    lp, mask, edit, ref = np_(batch.logps), np_(batch.mask), np_(batch.edit_mask), np_(batch.ref_logps)
    b, k, t = lp.shape

    def weight(x, e):
        return 1 + e * min(math.exp(-x), hp["delta"])

    score = np.array([[sum(weight(lp[i, j, s], edit[i, j, s]) * lp[i, j, s] for s in range(t) if mask[i, j, s])
                       for j in range(2)] for i in range(b)])
    if weight_reference:
        ref_score = np.array([[sum(weight(ref[i, j, s], edit[i, j, s]) * ref[i, j, s] for s in range(t) if mask[i, j, s])
                               for j in range(2)] for i in range(b)])
    else:
        ref_score = (ref * mask).sum(-1)
    loss, g_c, g_r, _ = sigmoid_dpo_reference(score[:, 0], score[:, 1], ref_score[:, 0], ref_score[:, 1], hp["beta"])
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    w = np.vectorize(weight)(lp, edit) * mask  # the weights are constants (sg(p_t))
    expected = np.stack([g_c[:, None] * w[:, 0], g_r[:, None] * w[:, 1]], 1)
    np.testing.assert_allclose(np_(batch.logps.grad), expected, rtol=1e-10, atol=1e-15)
    assert any(min(math.exp(-x), hp["delta"]) == hp["delta"] for x in lp[mask.astype(bool)])  # the clamp is exercised


@pytest.mark.parametrize("sft_weight", [0.0, 0.7])
def test_simpo_and_simpo_sft(sft_weight):
    batch = random_batch(seed=7)
    hp = {"beta": 2.0, "gamma_beta_ratio": 0.5, "sft_weight": sft_weight}
    out = simpo_loss(batch, hp)
    out.loss.backward()
    sums, counts, _ = seq(batch)
    means = sums / (counts + 1e-8)
    gamma = hp["beta"] * hp["gamma_beta_ratio"]
    x = hp["beta"] * (means[:, 0] - means[:, 1]) - gamma
    loss = np.mean([math.log1p(math.exp(-v)) for v in x])
    coef = np.array([hp["beta"] / (1 + math.exp(v)) for v in x]) / len(x)
    grad_seq = np.zeros(sums.shape)
    grad_seq[:, 0], grad_seq[:, 1] = -coef / (counts[:, 0] + 1e-8), coef / (counts[:, 1] + 1e-8)
    grad = seq_grad_to_tokens(batch, grad_seq)
    if sft_weight:
        loss += sft_weight * -sums[:, 0].sum() / (counts[:, 0].sum() + 1e-8)
        grad[:, 0] += -sft_weight / (counts[:, 0].sum() + 1e-8) * np_(batch.mask)[:, 0]
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(np_(batch.logps.grad), grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("given_kl", [None, 0.8, -0.3])
def test_kto_with_kl_reference_point(given_kl):
    batch = random_batch(seed=8, k=2)
    hp = {"beta": 0.3, "desirable_weight": 1.0, "undesirable_weight": 1.33}
    state = None if given_kl is None else torch.tensor(given_kl, dtype=torch.float64)
    out = kto_loss(batch, hp, state)
    out.loss.backward()
    sums, _, ref = seq(batch)
    kl_batch = np.mean(np_(batch.kl_logps) - np_(batch.kl_ref_logps))
    z = max(0.0, kl_batch if given_kl is None else given_kl)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    b, beta = len(sums), hp["beta"]
    losses, grad_seq = [], np.zeros(sums.shape)
    for i in range(b):
        r_w, r_l = sums[i, 0] - ref[i, 0], sums[i, 1] - ref[i, 1]
        losses += [hp["desirable_weight"] * (1 - sig(beta * (r_w - z))),
                   hp["undesirable_weight"] * (1 - sig(beta * (z - r_l)))]
        s_w, s_l = sig(beta * (r_w - z)), sig(beta * (z - r_l))
        grad_seq[i, 0] = -hp["desirable_weight"] * beta * s_w * (1 - s_w) / (2 * b)
        grad_seq[i, 1] = hp["undesirable_weight"] * beta * s_l * (1 - s_l) / (2 * b)
    assert out.loss.item() == pytest.approx(np.mean(losses), rel=1e-12)
    assert out.metrics["kl"] == pytest.approx(z, rel=1e-12)
    np.testing.assert_allclose(np_(batch.logps.grad), seq_grad_to_tokens(batch, grad_seq), rtol=1e-10, atol=1e-15)


def test_kto_unpaired_equals_paired_on_the_same_examples_and_float64():
    """Unpaired KTO (one labelled completion per example) on the 2B completions of B pairs, chosen
    labelled desirable and rejected undesirable, is paired KTO; and each example's loss and gradient
    follow the formula for its own label."""
    paired = random_batch(seed=9, k=2)
    hp = {"beta": 0.2, "desirable_weight": 1.0, "undesirable_weight": 1.5}
    b = paired.logps.shape[0]
    flat = lambda x: torch.cat([x[:, 0:1], x[:, 1:2]], dim=0)  # noqa: E731  [2B, 1, ...]
    logps = flat(paired.logps.detach()).clone().requires_grad_()
    unpaired = Batch(logps, flat(paired.mask), ref_logps=flat(paired.ref_logps),
                     kl_logps=paired.kl_logps, kl_ref_logps=paired.kl_ref_logps,
                     labels=torch.arange(2 * b) < b)
    out_p, out_u = kto_loss(paired, hp), kto_loss(unpaired, hp)
    out_p.loss.backward()
    out_u.loss.backward()
    assert out_u.loss.item() == pytest.approx(out_p.loss.item(), rel=1e-12)
    np.testing.assert_allclose(np_(logps.grad[:b, 0]), np_(paired.logps.grad[:, 0]), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(np_(logps.grad[b:, 0]), np_(paired.logps.grad[:, 1]), rtol=1e-10, atol=1e-15)
    # an unbalanced labelling: 1 desirable, the rest undesirable, against float64 by hand
    unpaired.labels = torch.arange(2 * b) == 3
    z = torch.tensor(0.4, dtype=torch.float64)
    out = kto_loss(unpaired, hp, z)
    sums, _, ref = seq(unpaired)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = [hp["desirable_weight"] * (1 - sig(0.2 * (sums[i, 0] - ref[i, 0] - 0.4))) if i == 3 else
                hp["undesirable_weight"] * (1 - sig(0.2 * (0.4 - sums[i, 0] + ref[i, 0]))) for i in range(2 * b)]
    assert out.loss.item() == pytest.approx(np.mean(expected), rel=1e-12)
    assert out.metrics["desirable_fraction"] == pytest.approx(1 / (2 * b))


@pytest.mark.parametrize("alpha", [1.0, 0.8, 0.0])
def test_dynft_token_weights(alpha):
    batch = random_batch(seed=9)
    out = dynft_loss(batch, {"alpha": alpha})
    out.loss.backward()
    lp, mask = np_(batch.logps)[:, 0], np_(batch.mask)[:, 0]
    weights = alpha * np.exp(lp) + (1 - alpha)
    n = mask.sum() + 1e-8
    assert out.loss.item() == pytest.approx((mask * weights * -lp).sum() / n, rel=1e-12)
    expected = np.zeros(np_(batch.logps).shape)
    expected[:, 0] = -mask * weights / n
    np.testing.assert_allclose(np_(batch.logps.grad), expected, rtol=1e-10, atol=1e-15)
    if alpha == 0.0:
        assert out.loss.item() == pytest.approx(sft_loss(batch, {}).loss.item(), rel=1e-12)


def test_sft_is_token_mean_nll():
    batch = random_batch(seed=5)
    sums, counts, _ = seq(batch)
    out = sft_loss(batch, {}, None)
    assert out.loss.item() == pytest.approx(-sums[:, 0].sum() / (counts[:, 0].sum() + 1e-8), rel=1e-12)


def test_token_logps_against_full_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 3:], mask[1, 1:5], mask[2, 6] = True, True, True
    got, got_mask = token_logps(logits, ids, mask)
    full = torch.log_softmax(logits, -1)
    for row in range(3):
        for t in range(1, 7):
            expected = full[row, t - 1, ids[row, t]].item() if mask[row, t] else 0.0
            assert got[row, t - 1].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert int(got_mask[row].sum()) == int(mask[row, 1:].sum())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_chunked_label_log_probs_match_autograd_of_log_softmax(monkeypatch, dtype):
    """Values and gradients of the chunked LabelLogProbs equal a full float64 log-softmax, with
    chunks that split sequences (5 positions of a 13-word vocabulary per chunk)."""
    from workflow_scripts import logprobs

    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 5 * 13)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 12, 13, generator=g, dtype=torch.float64) * 3).to(dtype)
    ids = torch.randint(0, 13, (3, 12), generator=g)
    weights = torch.randn(3, 11, generator=g, dtype=torch.float64)
    ours = logits.detach().clone().requires_grad_()
    got = logprobs.LabelLogProbs.apply(ours, ids[:, 1:])
    (got.double() * weights).sum().backward()
    ref = logits.detach().double().requires_grad_()
    expected = torch.log_softmax(ref[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    (expected * weights).sum().backward()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    assert got.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=tol, atol=tol)
    assert ours.grad.dtype == dtype and torch.all(ours.grad[:, -1] == 0)


def test_negative_columns_per_epoch():
    hp = {"m": 2, "sample": True, "epochs": 2}
    assert negative_columns("dft", hp, 0) == [0, 1]
    assert negative_columns("dft", hp, 1) == [2, 3]
    assert negative_columns("dft", dict(hp, sample=False), 1) == [0, 1]
    assert negative_columns("dpo", {}, 3) == [0]


def test_every_configured_method_has_a_loss():
    assert set(METHODS) == set(LOSSES)


class TwoProcessStub:
    """accelerator.reduce(x, 'sum') as if a second process held `other` (the epoch-end all-reduce)."""

    device = torch.device("cpu")

    def __init__(self, other):
        self.other = other

    def reduce(self, tensor, op):
        assert op == "sum"
        return tensor + self.other.pop(0)


def test_epoch_end_u_averaging_over_visiting_processes():
    from workflow_scripts.train import _average_state

    u0 = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    visited0 = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    u1 = torch.tensor([5.0, 0.0, 7.0, 9.0], dtype=torch.float64)
    visited1 = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    stub = TwoProcessStub([u1 * visited1, visited1])
    _average_state(stub, u0, visited0, reset=True)
    # id 0 seen by both -> mean; id 1 only here; id 2 only there; id 3 by none -> unchanged
    assert u0.tolist() == [3.0, 2.0, 7.0, 4.0]
    assert visited0.tolist() == [0.0] * 4


def _llama(attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, attn_implementation=attn)).double()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_forward_equals_one_forward_per_row(attn):
    """Each prompt computed once (its keys and values reused by its K responses) gives the log-probs,
    masks and ids of one forward over every full row, at prompts and responses of uneven lengths;
    gradients agree up to the float32 inside the model (RMSNorm, softmax)."""
    import random

    from workflow_scripts import logprobs
    from workflow_scripts.encoding import Encoded, Example

    model, rng = _llama(attn), random.Random(0)
    examples = []
    for i in range(5):
        prompt = [rng.randrange(1, 50) for _ in range(rng.randint(2, 9))]
        rows = [Encoded(prompt + [rng.randrange(1, 50) for _ in range(rng.randint(1, 7))], len(prompt), False)
                for _ in range(3)]
        examples.append(Example(f"e{i}", rows[0], rows[1:]))
    results = []
    for path in (lambda: logprobs._shared_prompt_logps(model, examples, 0),
                 lambda: logprobs._rows_logps(model, [e.rows[j] for j in range(3) for e in examples], 0)):
        model.zero_grad()
        logps, mask, ids = path()
        (logps * torch.arange(logps.numel(), dtype=logps.dtype).view_as(logps).sin()).sum().backward()
        results.append((logps.detach(), mask, ids, [p.grad.clone() for p in model.parameters()]))
    (shared, s_mask, s_ids, s_grads), (flat, f_mask, f_ids, f_grads) = results
    assert torch.equal(s_mask, f_mask) and torch.equal(s_ids, f_ids) and s_mask.sum() > 0
    with torch.no_grad():  # both paths run the LM head only where a scored token is predicted: against the full logits
        full = model(input_ids=f_ids, attention_mask=(f_ids != 0).long()).logits.log_softmax(-1)
    assert torch.allclose(flat, full[:, :-1].gather(-1, f_ids[:, 1:, None]).squeeze(-1) * f_mask, rtol=0, atol=1e-12)
    # eager attention takes its softmax in float32 (transformers' eager_attention_forward), whose sums run
    # in another order at other padded widths on some CPUs (1.6e-8 measured on an AVX2-only EPYC); sdpa's is float64
    assert torch.allclose(shared, flat, rtol=0, atol=1e-12 if attn == "sdpa" else 1e-7)
    for g_shared, g_flat in zip(s_grads, f_grads):
        assert torch.allclose(g_shared, g_flat, rtol=1e-5, atol=1e-6)


def test_forward_shares_prompts_only_when_every_row_has_the_same_prompt(monkeypatch):
    from workflow_scripts import encoding, logprobs
    from workflow_scripts.encoding import Encoded, Example

    same = Example("a", Encoded([1, 2, 3, 4], 2, False), [Encoded([1, 2, 5], 2, False)])
    cut = Example("b", Encoded([1, 2, 3, 4], 2, False), [Encoded([2, 5, 6, 7], 1, True)])  # a truncated prompt
    used = []
    monkeypatch.setattr(logprobs, "_shared_prompt_logps", lambda *a: used.append("shared") or real_rows(*a))
    real_rows = lambda model, examples, pad: logprobs._rows_logps(  # noqa: E731
        model, [e.rows[j] for j in range(2) for e in examples], pad)
    model = _llama("sdpa")
    logprobs.forward_logps(model, [same], 0)
    logprobs.forward_logps(model, [same, cut], 0)
    assert used == ["shared"]
    assert encoding.shared_prompt(same.rows) and not encoding.shared_prompt(cut.rows)
