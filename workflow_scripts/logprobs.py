"""Per-token log-probs of encoded examples under a model: the padded forward (the LM head only where a
scored token is predicted), the shared-prompt forward (the prompt once per example, its keys and values
continued by every response), and the chunked label log-prob kernel that never holds a full
log-softmax."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .encoding import Encoded, Example, shared_prompt


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


CHUNK_ELEMENTS = 1 << 21  # logits entries per chunk (8 MB in float32)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Log-probs of half-precision logits are computed in float32; float32 and float64 stay as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class LabelLogProbs(torch.autograd.Function):
    """log p(label_t) = logits_t[label_t] - logsumexp(logits_t), in chunks of positions.

    Nothing of vocabulary size is kept for backward but the logits themselves, and no full-size
    temporary is made: forward and backward work on chunks of positions (half precision upcast to
    float32 a chunk at a time; float64 stays float64), and backward writes softmax - one-hot
    straight into the gradient. Position t's logits predict label t; the last position predicts
    nothing (its gradient is zero).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, t, v = logits.shape
        work = work_dtype(logits.dtype)
        flat, targets = logits.reshape(b * t, v), torch.nn.functional.pad(labels, (0, 1)).reshape(-1)
        out = torch.empty(b * t, dtype=work, device=logits.device)
        lse = torch.empty_like(out)
        rows = max(1, CHUNK_ELEMENTS // v)
        for s in range(0, b * t, rows):
            e = min(s + rows, b * t)
            x = flat[s:e].to(work)
            lse[s:e] = torch.logsumexp(x, dim=-1)
            out[s:e] = x.gather(-1, targets[s:e, None]).squeeze(-1) - lse[s:e]
        ctx.save_for_backward(logits, targets, lse)
        return out.view(b, t)[:, :-1].contiguous()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        b, t, v = logits.shape
        flat, grad = logits.reshape(b * t, v), torch.empty_like(logits)
        grad_flat = grad.view(b * t, v)
        g = torch.nn.functional.pad(grad_out.to(lse.dtype), (0, 1)).reshape(-1, 1)  # 0 at the last positions
        rows = max(1, CHUNK_ELEMENTS // v)
        for s in range(0, b * t, rows):
            e = min(s + rows, b * t)
            chunk = (flat[s:e] - lse[s:e, None]).exp_().mul_(-g[s:e])  # one chunk of -g * softmax
            chunk.scatter_add_(-1, targets[s:e, None], g[s:e])
            grad_flat[s:e] = chunk
        return grad, None


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor):
    """Per-token log-probs of the labels (logits[:, :-1] predict ids[:, 1:]), half precision upcast to
    float32, zero off the mask, and the mask. See LabelLogProbs for the memory it takes (about the gradient of the logits)."""
    mask = loss_mask[:, 1:]
    return LabelLogProbs.apply(logits, input_ids[:, 1:]) * mask, mask


@dataclass
class Forward:
    """Per-token log-probs of a micro-batch, [B, K, T] with K = 1 + negatives (column 0 chosen)."""
    logps: torch.Tensor
    mask: torch.Tensor
    input_ids: torch.Tensor                 # [B, K, T + 1], the padded rows
    kl_logps: torch.Tensor | None = None    # [B, K] summed, on the mismatched KTO rows


def _rows_logps(model, seqs: list[Encoded], pad_id: int):
    """The rows' per-token log-probs in one forward; the LM head runs only from the position before the
    batch's first response token (the positions before it predict nothing that is scored)."""
    batch = pad_batch(seqs, pad_id)
    device = next(model.parameters()).device
    ids, loss_mask = batch["input_ids"].to(device), batch["loss_mask"].to(device)
    scored = loss_mask.any(0).nonzero()
    start = max(int(scored[0]) - 1, 0) if len(scored) else 0
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device), use_cache=False,
                   logits_to_keep=ids.shape[1] - start).logits
    mask = loss_mask[:, 1:]
    logps = torch.nn.functional.pad(LabelLogProbs.apply(logits, ids[:, start + 1:]), (start, 0)) * mask
    return logps, mask, ids


def _shared_prompt_logps(model, examples: list[Example], pad_id: int):
    """The rows' per-token log-probs with each prompt computed once: a forward over the (right-padded)
    prompts keeps their keys and values, repeated for the K responses of each example, which a second
    forward continues. Same values as `_rows_logps` on the same rows (same positions, same masks), laid
    out like it ([col0 of all examples; col1; ...], position t predicts token t + 1 of the row), with
    the prompt tokens' work done once instead of K times."""
    b, k = len(examples), len(examples[0].rows)
    rows = [e.rows[j] for j in range(k) for e in examples]
    batch = pad_batch(rows, pad_id)  # the layout of the flat path: ids, and the loss mask over responses
    device = next(model.parameters()).device
    n_prompt = torch.tensor([e.chosen.n_prompt for e in examples], device=device)
    # right padding: no query row is fully masked (left padding's would be NaN)
    prompts = pad_batch([Encoded(e.chosen.ids[: e.chosen.n_prompt], 0, False) for e in examples], pad_id)
    prompt_mask = prompts["attention_mask"].to(device)
    last_positions = n_prompt - 1
    keep = torch.unique(last_positions)  # the LM head runs only where a prompt ends
    first = model(input_ids=prompts["input_ids"].to(device), attention_mask=prompt_mask, use_cache=True,
                  logits_to_keep=keep)
    cache = first.past_key_values
    cache.batch_repeat_interleave(k)  # example-major rows: example i's responses are rows i*k .. i*k + k - 1
    responses = pad_batch([Encoded(e.rows[j].ids[e.rows[j].n_prompt:], 0, False) for e in examples for j in range(k)],
                          pad_id)
    r_ids, r_mask = responses["input_ids"].to(device), responses["attention_mask"].to(device)
    r_width = r_ids.shape[1]
    starts = n_prompt.repeat_interleave(k)[:, None]
    logits = model(input_ids=r_ids, attention_mask=torch.cat([prompt_mask.repeat_interleave(k, 0), r_mask], 1),
                   position_ids=starts + torch.arange(r_width, device=device), past_key_values=cache,
                   use_cache=True).logits
    # the last prompt position predicts the first response token
    last = first.logits[torch.arange(b, device=device), torch.searchsorted(keep, last_positions)].repeat_interleave(k, 0)
    head = torch.log_softmax(last.to(work_dtype(last.dtype)), -1)
    logps = torch.cat([head.gather(-1, r_ids[:, :1]), LabelLogProbs.apply(logits, r_ids[:, 1:])], 1) * r_mask
    # into the flat layout: response token i of a row sits at position n_prompt - 1 + i
    index = (starts - 1 + torch.arange(r_width, device=device)).clamp(max=batch["input_ids"].shape[1] - 2)
    flat = torch.zeros((b * k, batch["input_ids"].shape[1] - 1), dtype=logps.dtype, device=device)
    flat = flat.scatter_add(1, index, logps)
    flat = flat.view(b, k, -1).transpose(0, 1).reshape(b * k, -1)  # example-major -> column-major
    mask = batch["loss_mask"][:, 1:].to(device)
    return flat * mask, mask, batch["input_ids"].to(device)


def forward_logps(model, examples: list[Example], pad_id: int, share_prompts: bool = True) -> Forward:
    """One pass over [chosen; neg_1; ...; neg_m] of the micro-batch, each prompt computed once when
    `share_prompts` and all its rows share it (see `_shared_prompt_logps`; a gradient-checkpointed
    model keeps no KV cache, so it takes the flat forward); KTO's mismatched rows, which only enter
    the detached KL estimate, go through a second forward without autograd."""
    b, k = len(examples), len(examples[0].rows)

    def grid(x, cols):  # rows ordered column-major [col0 of all examples; col1; ...] -> [B, cols, ...]
        return x.view(cols, b, *x.shape[1:]).transpose(0, 1)

    if share_prompts and k > 1 and all(shared_prompt(e.rows) for e in examples):
        logps, mask, ids = _shared_prompt_logps(model, examples, pad_id)
    else:
        logps, mask, ids = _rows_logps(model, [e.rows[j] for j in range(k) for e in examples], pad_id)
    out = Forward(grid(logps, k), grid(mask, k), grid(ids, k))
    n_kl = len(examples[0].kl)
    if n_kl:
        with torch.no_grad():
            kl_logps, _, _ = _rows_logps(model, [e.kl[j] for j in range(n_kl) for e in examples], pad_id)
        out.kl_logps = grid(kl_logps.sum(-1), n_kl)
    return out
