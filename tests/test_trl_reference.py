"""Our losses against TRL 1.16's trainers on identical batches.

For DPO (sigmoid), KTO (with its KL reference point) and Dynamic Fine-Tuning (SFTTrainer
loss_type "dft", and "nll" for alpha = 0), a tiny float32 Llama and the project's BPE tokenizer
(`tiny_world.train_tokenizer`, zephyr chat template) are given to the TRL trainer through a text
dataset that TRL tokenises itself; one batch from TRL's own collator goes through the trainer's
`compute_loss` (with its fused LM head), and the same examples through our
`encoding.encode_examples` / `forward_logps` and loss. The tests check that TRL scores exactly our
tokens (prompt / completion split, EOS), then compare the loss values, the logged metrics and the
gradients w.r.t. every policy parameter (each side on its own copy of the same weights).

The reference differs from the policy (the policy is the reference after a few SFT steps on the
responses), so the reference terms and KTO's KL estimate are non-zero.
"""
from __future__ import annotations

import copy
import logging
import os

for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer  # noqa: E402

from workflow_scripts import losses  # noqa: E402
from workflow_scripts.encoding import encode_examples, render_prompt  # noqa: E402
from workflow_scripts.logprobs import forward_logps  # noqa: E402
from workflow_scripts.tiny_world import train_tokenizer  # noqa: E402

# TRL's configs still carry transformers' deprecated `gradient_checkpointing` argument
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")

LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-7
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7
SETTINGS = {"max_length": 512, "max_prompt_length": 256}

RECORDS = [
    {"id": "a", "prompt": [{"role": "user", "content": "What is 3 + 4?"}],
     "chosen": "3 + 4 = 7. The answer is 7.", "negatives": ["3 + 4 = 8, so 8."]},
    {"id": "b", "prompt": [{"role": "user", "content": "Tom has 12 apples and eats 5. How many are left?"}],
     "chosen": "12 - 5 = 7. The answer is 7.", "negatives": ["He has 17 apples left. The answer is 17."]},
    {"id": "c", "prompt": [{"role": "user", "content": "Compute 6 * 9."}],
     "chosen": "6 * 9 = 54. The answer is 54.", "negatives": ["54"]},
    {"id": "d", "prompt": [{"role": "user", "content": "Is 91 prime?"}],
     "chosen": "91 = 7 * 13, so no.", "negatives": ["Yes, 91 is prime because it is odd."]},
]


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def world():
    """Tokenizer, reference model and a policy that differs from it (a few SFT steps on the responses)."""
    texts = [m["content"] for r in RECORDS for m in r["prompt"]] + [r["chosen"] for r in RECORDS] \
        + [n for r in RECORDS for n in r["negatives"]]
    tok = train_tokenizer(texts * 4, vocab_size=320)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ref = LlamaForCausalLM(config).float().eval()
    policy = copy.deepcopy(ref)
    examples, _ = encode_examples(tok, RECORDS, [0], SETTINGS)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(15):
        fwd = forward_logps(policy, examples, tok.pad_token_id)
        loss = -(fwd.logps.sum() / fwd.mask.sum())
        loss.backward()
        opt.step()
        opt.zero_grad()
    policy.eval()
    return {"tok": tok, "ref": ref, "policy": policy}


def trl_prompt(tok, record) -> str:
    """The rendered prompt as TRL gets it: TRL's tokenizer call adds the BOS, so the text must not carry it."""
    text = render_prompt(tok, record["prompt"])
    assert text.startswith(tok.bos_token)
    return text[len(tok.bos_token):]


def common_args(tmp_path, batch_size: int) -> dict:
    return dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, fp16=False,
                gradient_checkpointing=False, per_device_train_batch_size=batch_size, seed=0,
                dataloader_num_workers=0)


def fresh(model):
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    return m


def assert_grads_close(ours, theirs) -> float:
    """Gradients of every policy parameter agree; returns the max abs difference."""
    theirs = dict(theirs.named_parameters())
    worst, n = 0.0, 0
    for name, p in ours.named_parameters():
        q = theirs[name]
        assert p.grad is not None and q.grad is not None, name
        assert q.grad.abs().max() > 0, f"{name}: TRL gradient is zero"
        torch.testing.assert_close(p.grad, q.grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=lambda m: f"{name}: {m}")
        worst = max(worst, (p.grad - q.grad).abs().max().item())
        n += 1
    assert n > 10
    return worst


def trl_metrics(trainer) -> dict[str, float]:
    mode = "train" if trainer.model.training else "eval"
    return {k: v[-1] for k, v in trainer._metrics[mode].items() if v}


def our_forwards(world, examples):
    """Policy forward with grad (on a fresh copy) and reference forward without."""
    pad = world["tok"].pad_token_id
    model = fresh(world["policy"])
    fwd = forward_logps(model, examples, pad)
    with torch.no_grad():
        ref = forward_logps(world["ref"], examples, pad)
    return model, fwd, ref


# ---------------------------------------------------------------------------------------------- DPO

@pytest.mark.parametrize("n", [3, 4])
def test_dpo_matches_trl_sigmoid(world, tmp_path, n):
    beta = 0.1
    tok, records = world["tok"], RECORDS[:n]
    examples, _ = encode_examples(tok, records, [0], SETTINGS)

    ds = datasets.Dataset.from_list([{"prompt": trl_prompt(tok, r), "chosen": r["chosen"],
                                      "rejected": r["negatives"][0]} for r in records])
    trl_model = fresh(world["policy"])
    trainer = DPOTrainer(
        model=trl_model, ref_model=copy.deepcopy(world["ref"]), processing_class=tok, train_dataset=ds,
        args=DPOConfig(beta=beta, loss_type=["sigmoid"], precompute_ref_log_probs=False, max_length=None,
                       **common_args(tmp_path, n)))
    rows = [trainer.train_dataset[i] for i in range(n)]
    for row, ex in zip(rows, examples):  # TRL scores exactly our tokens
        k = ex.chosen.n_prompt
        assert row["prompt_ids"] == ex.chosen.ids[:k] == ex.negatives[0].ids[:k]
        assert row["chosen_ids"] == ex.chosen.ids[k:] and row["chosen_ids"][-1] == tok.eos_token_id
        assert row["rejected_ids"] == ex.negatives[0].ids[ex.negatives[0].n_prompt:]
    batch = trainer.data_collator(rows)
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()

    model, fwd, ref = our_forwards(world, examples)
    out = losses.dpo_loss(losses.Batch(fwd.logps, fwd.mask, ref_logps=ref.logps.sum(-1)), {"beta": beta})
    out.loss.backward()

    torch.testing.assert_close(out.loss, trl_loss.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL)
    m = trl_metrics(trainer)
    for ours, theirs in [("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                         ("rewards/margin", "rewards/margins"), ("rewards/accuracy", "rewards/accuracies"),
                         ("logps/chosen", "logps/chosen"), ("logps/rejected", "logps/rejected")]:
        assert out.metrics[ours] == pytest.approx(m[theirs], rel=1e-5, abs=1e-6), ours
    assert abs(out.metrics["rewards/margin"]) > 1e-3  # the reference matters
    grad_diff = assert_grads_close(model, trl_model)
    print(f"DPO n={n}: loss ours={out.loss.item():.8f} trl={trl_loss.item():.8f} "
          f"|dloss|={abs(out.loss.item() - trl_loss.item()):.2e} max|dgrad|={grad_diff:.2e}")


# ---------------------------------------------------------------------------------------------- KTO

@pytest.mark.parametrize("n", [3, 4])
def test_kto_matches_trl_with_kl_term(world, tmp_path, n):
    """TRL's unpaired batch is our B examples column-major: [desirable_0..B-1, undesirable_0..B-1], one
    micro-batch of 2B rows; TRL rotates the completions by one within it for the KL rows."""
    hp = {"beta": 0.1, "desirable_weight": 1.25, "undesirable_weight": 0.8}
    tok, records = world["tok"], RECORDS[:n]
    examples, _ = encode_examples(tok, records, [0], SETTINGS, kl_pairs=True)

    unpaired = [{"prompt": trl_prompt(tok, r), "completion": r["chosen"], "label": True} for r in records] \
        + [{"prompt": trl_prompt(tok, r), "completion": r["negatives"][0], "label": False} for r in records]
    trl_model = fresh(world["policy"])
    trainer = KTOTrainer(
        model=trl_model, ref_model=copy.deepcopy(world["ref"]), processing_class=tok,
        train_dataset=datasets.Dataset.from_list(unpaired),
        args=KTOConfig(beta=hp["beta"], loss_type="kto", desirable_weight=hp["desirable_weight"],
                       undesirable_weight=hp["undesirable_weight"], precompute_ref_log_probs=False,
                       max_length=None, **common_args(tmp_path, 2 * n)))
    rows = [trainer.train_dataset[i] for i in range(2 * n)]
    ours_rows = [ex.chosen for ex in examples] + [ex.negatives[0] for ex in examples]
    for row, enc in zip(rows, ours_rows):
        assert row["prompt_ids"] + row["completion_ids"] == enc.ids
        assert len(row["prompt_ids"]) == enc.n_prompt and row["completion_ids"][-1] == tok.eos_token_id
    # TRL's mismatched (prompt, completion) pairs are the same multiset as ours (cyclic within the batch)
    trl_kl = sorted(tuple(r["prompt_ids"] + r["KL_completion_ids"]) for r in rows)
    ours_kl = sorted(tuple(e.ids) for ex in examples for e in ex.kl)
    assert trl_kl == ours_kl
    real = {tuple(r["prompt_ids"] + r["completion_ids"]) for r in rows}
    assert not real & set(trl_kl)  # every KL row really is mismatched
    batch = trainer.data_collator(rows)
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()
    m = trl_metrics(trainer)

    model, fwd, ref = our_forwards(world, examples)
    b = losses.Batch(fwd.logps, fwd.mask, ref_logps=ref.logps.sum(-1), kl_logps=fwd.kl_logps,
                     kl_ref_logps=ref.kl_logps)
    out = losses.kto_loss(b, hp, None)
    out.loss.backward()

    torch.testing.assert_close(out.loss, trl_loss.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL)
    # the KL reference point is really in play: positive, and the loss without it differs
    assert m["kl"] > 0.05
    assert out.metrics["kl"] == pytest.approx(m["kl"], rel=1e-5, abs=1e-6)
    no_kl = losses.kto_loss(losses.Batch(fwd.logps.detach(), fwd.mask, ref_logps=ref.logps.sum(-1)), hp,
                            torch.tensor(0.0)).loss
    assert abs(no_kl.item() - trl_loss.item()) > 100 * LOSS_ATOL + 1e-4
    # passing the (already averaged) estimate as state gives the same loss
    with_state = losses.kto_loss(losses.Batch(fwd.logps.detach(), fwd.mask, ref_logps=ref.logps.sum(-1)), hp,
                                 torch.tensor(m["kl"])).loss
    torch.testing.assert_close(with_state, trl_loss.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL)
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert out.metrics[key] == pytest.approx(m[key], rel=1e-5, abs=1e-6), key
    grad_diff = assert_grads_close(model, trl_model)
    print(f"KTO n={n}: kl={m['kl']:.4f} loss ours={out.loss.item():.8f} trl={trl_loss.item():.8f} "
          f"(without KL {no_kl.item():.6f}) |dloss|={abs(out.loss.item() - trl_loss.item()):.2e} "
          f"max|dgrad|={grad_diff:.2e}")


# ----------------------------------------------------------------------------- Dynamic Fine-Tuning

@pytest.mark.parametrize(("alpha", "loss_type"), [(1.0, "dft"), (0.0, "nll")])
def test_dynft_matches_trl_sft(world, tmp_path, alpha, loss_type):
    n = 3
    tok, records = world["tok"], RECORDS[:n]
    examples, _ = encode_examples(tok, records, [], SETTINGS)

    ds = datasets.Dataset.from_list([{"prompt": trl_prompt(tok, r), "completion": r["chosen"]} for r in records])
    trl_model = fresh(world["policy"])
    trainer = SFTTrainer(
        model=trl_model, processing_class=tok, train_dataset=ds,
        args=SFTConfig(loss_type=loss_type, max_length=None, packing=False, **common_args(tmp_path, n)))
    assert trainer.completion_only_loss
    rows = [trainer.train_dataset[i] for i in range(n)]
    for row, ex in zip(rows, examples):
        assert row["input_ids"] == ex.chosen.ids and row["input_ids"][-1] == tok.eos_token_id
        assert row["labels"] == [-100] * ex.chosen.n_prompt + ex.chosen.ids[ex.chosen.n_prompt:]
    batch = trainer.data_collator(rows)
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()

    model = fresh(world["policy"])
    fwd = forward_logps(model, examples, tok.pad_token_id)
    out = losses.dynft_loss(losses.Batch(fwd.logps, fwd.mask), {"alpha": alpha})
    out.loss.backward()

    torch.testing.assert_close(out.loss, trl_loss.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL)
    if alpha == 0.0:  # and the plain SFT loss is the same
        torch.testing.assert_close(losses.sft_loss(losses.Batch(fwd.logps.detach(), fwd.mask), {}).loss,
                                   trl_loss.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL)
    grad_diff = assert_grads_close(model, trl_model)
    print(f"DynFT alpha={alpha} vs TRL {loss_type}: loss ours={out.loss.item():.8f} trl={trl_loss.item():.8f} "
          f"|dloss|={abs(out.loss.item() - trl_loss.item()):.2e} max|dgrad|={grad_diff:.2e}")
