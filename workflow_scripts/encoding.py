"""Prompt rendering, prompt + response tokenisation with the recipe's truncation, and padding."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .io import InputError


def render_prompt(tokenizer, messages: list[dict], system_prompt: str | None = None,
                  prompt_format: str | None = None, prefix: str = "") -> str:
    """The prompt text: the chat template with its generation prompt, or a raw format string, then
    `prefix` (the start of the response that is given, e.g. SCDPO's correct steps)."""
    if prompt_format is not None:
        return prompt_format.format(prompt=messages[-1]["content"]) + prefix
    if tokenizer.chat_template is None:
        raise InputError(tokenizer.name_or_path, "the model ships no chat template: give its config entry a "
                         "chat_template, or the stage a raw prompt_format")
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + list(messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt, adding BOS only when the text does not already start with it."""
    has_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    ids = tokenizer(text, add_special_tokens=not has_bos)["input_ids"]
    if tokenizer.bos_token_id is not None and ids[:2] == [tokenizer.bos_token_id] * 2:
        raise ValueError(f"double BOS in rendered prompt {text[:60]!r}")
    return ids


def encode_response(tokenizer, text: str, response_format: str | None = None) -> list[int]:
    """Response ids followed by EOS (the model learns to stop); with a `response_format`, the text around
    {response} is scored too (PenGuln/DFT's '<|assistant|>\\n{response}</s>\\n')."""
    if response_format is not None:
        text = response_format.format(response=text)
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
class Example:
    """One training example tokenised: the chosen response (for KTO's unpaired data, the labelled
    completion), the selected negatives and, for KTO, the mismatched rows (this prompt with the
    previous example's responses)."""
    id: str
    chosen: Encoded
    negatives: list[Encoded]
    kl: list[Encoded] = field(default_factory=list)
    label: bool | None = None

    @property
    def rows(self) -> list[Encoded]:
        return [self.chosen, *self.negatives]


def record_segments(tokenizer, record: dict, n_negatives: int, settings: dict) -> list[list[int]]:
    """A record's token ids as training renders them: [prompt, chosen response, negatives 0 .. n_negatives - 1]."""
    prompt = encode_prompt(tokenizer, render_prompt(tokenizer, record["prompt"], prompt_format=settings.get("prompt_format"),
                                                    prefix=record.get("prefix", "")))
    return [prompt] + [encode_response(tokenizer, text, settings.get("response_format"))
                       for text in [record["chosen"], *record["negatives"][:n_negatives]]]


def join_example(record_id: str, label: bool | None, segments: list[list[int]], previous: list[list[int]] | None,
                 columns: list[int], settings: dict, source: str, line: int) -> Example:
    """An example from a record's segments (negatives in `columns`) with the recipe's truncation; `previous`: the
    segments of the record before it, for KTO's mismatched rows. With `over_long_prompts: error`, a prompt the
    recipe would cut (too long for max_length, over max_prompt_length) is refused, naming `source`, line and field."""
    prompt, limit, max_length = segments[0], settings["max_prompt_length"], settings["max_length"]

    def join(response: list[int]) -> Encoded:
        if settings.get("over_long_prompts") == "error" and len(prompt) + len(response) > max_length \
                and len(prompt) > limit:
            raise InputError(source, f"id {record_id!r}: the prompt has {len(prompt)} tokens, over "
                             f"max_prompt_length {limit} in an example over max_length {max_length} "
                             "(over_long_prompts: truncate keeps its end, as the recipes do)", line, "prompt")
        return join_truncated(prompt, response, max_length, limit, record_id)

    example = Example(record_id, join(segments[1]), [join(segments[2 + c]) for c in columns], label=label)
    if previous is not None:
        example.kl = [join(previous[1])] + [join(previous[2 + c]) for c in columns]
    return example


def encode_examples(tokenizer, records: list[dict], columns: list[int], settings: dict,
                    kl_pairs: bool = False, source: str = "data",
                    rows: range | None = None) -> tuple[list[Example], int]:
    """Tokenise records (negatives in `columns`) into examples (`join_example`); also count truncations.
    `rows`: the records to tokenise (default: all), by index, so that a shard's lines and KTO pairs are the
    whole file's.

    With `kl_pairs`, example i also gets (prompt_i, response of example i-1) for each of its
    responses, cyclically in file order: KTO's mismatched pairs, fixed per id so that the
    reference cache can hold them.
    """
    rows = range(len(records)) if rows is None else rows
    needed = set(rows) | ({(i - 1) % len(records) for i in rows} if kl_pairs else set())
    n_negatives = max(columns, default=-1) + 1
    segments = {i: record_segments(tokenizer, records[i], n_negatives, settings) for i in needed}
    examples = [join_example(records[i]["id"], records[i].get("label"), segments[i],
                             segments[(i - 1) % len(records)] if kl_pairs else None, columns, settings, source, i + 1)
                for i in rows]
    return examples, sum(e.truncated for ex in examples for e in ex.rows)


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


def shared_prompt(rows: list[Encoded]) -> bool:
    """Whether every row of an example starts with the same prompt (false only when the recipe's
    truncation cut the prompt for some responses and not others)."""
    n = rows[0].n_prompt
    return all(r.n_prompt == n and r.ids[:n] == rows[0].ids[:n] for r in rows[1:])


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
