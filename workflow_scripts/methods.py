"""The method registry: what each training method reads (its hyper-parameters beyond the common ones),
how many negatives an example holds per step, and whether it needs a reference model; the losses
themselves are `losses.LOSSES`. Read by the config checks, the plan and the trainer."""
from __future__ import annotations

from dataclasses import dataclass

COMMON_KEYS = ["method", "lr", "epochs", "batch_size", "micro_batch_size", "warmup_ratio", "weight_decay",
               "max_grad_norm", "adam_betas", "adam_eps", "schedule", "dtype", "max_length", "max_prompt_length",
               "prompt_format", "response_format", "over_long_prompts", "lora", "checkpoint_every", "keep_checkpoints", "precision",
               "gradient_checkpointing", "attn_implementation"]


@dataclass(frozen=True)
class MethodSpec:
    """What a method reads and needs; the loss itself is `losses.LOSSES[name]`."""
    keys: tuple[str, ...]        # hyper-parameters it reads beyond COMMON_KEYS
    negatives: int | str         # negatives per example in one step: a number or "m"
    needs_ref: bool
    stateful: bool = False       # keeps a per-example state (DFT's u), checkpointed
    token_ref: bool = False      # needs the reference's per-token log-probs (DPO-BMC)
    edit_mask: bool = False      # needs the DPO-BMC token-difference mask
    kl_pairs: bool = False       # needs KTO's mismatched (prompt, completion) pairs

    def n_negatives(self, hp: dict) -> int:
        """Negatives per example in a step; unpaired (labelled) data has none."""
        if hp.get("unpaired"):
            return 0
        return hp["m"] if self.negatives == "m" else self.negatives


DFT_KEYS = ("tau", "gamma", "m", "sample", "reset_visited")


METHODS = {
    "sft": MethodSpec((), 0, needs_ref=False),
    "dynft": MethodSpec(("alpha",), 0, needs_ref=False),
    "dpo": MethodSpec(("beta",), 1, needs_ref=True),
    "scdpo": MethodSpec(("beta",), 1, needs_ref=True),
    "spin": MethodSpec(("beta",), 1, needs_ref=True),
    "dpo_bmc": MethodSpec(("beta", "delta", "bmc_weight_reference"), 1, needs_ref=True, token_ref=True,
                          edit_mask=True),
    "simpo": MethodSpec(("beta", "gamma_beta_ratio"), 1, needs_ref=False),
    "simpo_sft": MethodSpec(("beta", "gamma_beta_ratio", "sft_weight"), 1, needs_ref=False),
    "kto": MethodSpec(("beta", "desirable_weight", "undesirable_weight", "unpaired"), 1, needs_ref=True,
                      kl_pairs=True),
    "dft": MethodSpec(DFT_KEYS, "m", needs_ref=True, stateful=True),
    "dft2": MethodSpec(DFT_KEYS, "m", needs_ref=False, stateful=True),
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


def refcache_settings(hp: dict) -> dict:
    """The encoding settings a reference cache shares with the runs that read it (its digest)."""
    spec = METHODS[hp["method"]]
    return {"max_length": hp["max_length"], "max_prompt_length": hp["max_prompt_length"],
            "prompt_format": hp["prompt_format"], "response_format": hp["response_format"],
            "over_long_prompts": hp["over_long_prompts"],
            "token_level": spec.token_ref, "kl_pairs": spec.kl_pairs}


def run_hyperparameters(run: dict, seed: int) -> dict:
    """Only the keys the run's method reads, so that an unrelated default never reruns it."""
    keys = COMMON_KEYS + list(METHODS[run["method"]].keys)
    hp = {k: run[k] for k in keys if k in run}
    hp["seed"] = seed
    return hp
