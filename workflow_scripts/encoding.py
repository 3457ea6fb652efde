"""Prompt rendering, prompt + response tokenisation with the recipe's truncation, and padding."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def render_prompt(tokenizer, messages: list[dict], system_prompt: str | None = None,
                  prompt_format: str | None = None) -> str:
    """The prompt text: the chat template with its generation prompt, or a raw format string."""
    if prompt_format is not None:
        return prompt_format.format(prompt=messages[-1]["content"])
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + list(messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt, adding BOS only when the text does not already start with it."""
    has_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    ids = tokenizer(text, add_special_tokens=not has_bos)["input_ids"]
    if tokenizer.bos_token_id is not None and ids[:2] == [tokenizer.bos_token_id] * 2:
        raise ValueError(f"double BOS in rendered prompt {text[:60]!r}")
    return ids


def encode_response(tokenizer, text: str) -> list[int]:
    """Response ids followed by EOS (the model learns to stop)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


@dataclass
class Encoded:
    ids: list[int]
    n_prompt: int
    truncated: bool


def join_truncated(prompt_ids: list[int], response_ids: list[int], max_length: int, max_prompt_length: int,
                   example_id: str) -> Encoded:
    """Prompt keeps its end (max_prompt_length), then the response is cut to fit max_length."""
    truncated = False
    if len(prompt_ids) + len(response_ids) > max_length:
        truncated = True
        prompt_ids = prompt_ids[-max_prompt_length:]
        response_ids = response_ids[: max_length - len(prompt_ids)]
    if not response_ids:
        raise ValueError(f"example {example_id}: no response token fits in max_length={max_length} "
                         f"after the prompt ({len(prompt_ids)} tokens)")
    return Encoded(prompt_ids + response_ids, len(prompt_ids), truncated)


def pad_batch(encoded: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and a loss mask over response tokens."""
    width = max(len(e.ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    loss_mask = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, e in enumerate(encoded):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        attention[row, : len(e.ids)] = 1
        loss_mask[row, e.n_prompt: len(e.ids)] = True
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor):
    """Summed response log-probs and token counts per row (logits[:, :-1] predict ids[:, 1:]).

    Uses gather - logsumexp, so no float32 log-softmax over the vocabulary is kept.
    """
    logits = logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    labels = input_ids[:, 1:]
    mask = loss_mask[:, 1:]
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    token_logps = token_logps * mask
    return token_logps.sum(-1), mask.sum(-1)


@dataclass
class Example:
    """One training example tokenised: the chosen response and the selected negatives."""
    id: str
    chosen: Encoded
    negatives: list[Encoded]


def encode_examples(tokenizer, records: list[dict], columns: list[int], settings: dict) -> tuple[list[Example], int]:
    """Tokenise records (negatives in `columns`) with the recipe's truncation; also count truncations."""
    examples, n_truncated = [], 0
    for r in records:
        prompt_ids = encode_prompt(tokenizer, render_prompt(tokenizer, r["prompt"], prompt_format=settings.get("prompt_format")))

        def join(text):
            return join_truncated(prompt_ids, encode_response(tokenizer, text), settings["max_length"],
                                  settings["max_prompt_length"], r["id"])

        ex = Example(r["id"], join(r["chosen"]), [join(r["negatives"][c]) for c in columns])
        n_truncated += ex.chosen.truncated + sum(n.truncated for n in ex.negatives)
        examples.append(ex)
    return examples, n_truncated


def forward_logps(model, examples: list[Example], pad_id: int):
    """One forward over [chosen; neg_1; ...; neg_m] of the batch: (chosen, chosen_n, negs [B,m], negs_n [B,m])."""
    m = len(examples[0].negatives)
    seqs = [e.chosen for e in examples] + [e.negatives[j] for j in range(m) for e in examples]
    batch = pad_batch(seqs, pad_id)
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                   use_cache=False).logits
    logps, n = sequence_logps(logits, batch["input_ids"].to(device), batch["loss_mask"].to(device))
    b = len(examples)
    return logps[:b], n[:b], logps[b:].view(m, b).T, n[b:].view(m, b).T
