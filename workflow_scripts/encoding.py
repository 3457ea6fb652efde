"""Prompt rendering, prompt + response tokenisation with the recipe's truncation, and the examples a
batch is made of (the log-probs of their rows: workflow_scripts/logprobs.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

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


def encode_examples(tokenizer, records: list[dict] | dict[int, dict], columns: list[int], settings: dict,
                    kl_pairs: bool = False, source: str = "data", rows: range | None = None,
                    total: int | None = None) -> tuple[list[Example], int]:
    """Tokenise records (negatives in `columns`) into examples (`join_example`); also count truncations.
    `rows`: the records to tokenise (default: all), by their index in the file, so that a shard's lines and KTO
    pairs are the whole file's: then `records` may hold only those rows (and with `kl_pairs` the row before
    each), by index, and `total` is the file's length.

    With `kl_pairs`, example i also gets (prompt_i, response of example i-1) for each of its
    responses, cyclically in file order: KTO's mismatched pairs, fixed per id so that the
    reference cache can hold them.
    """
    total = len(records) if total is None else total
    rows = range(total) if rows is None else rows
    needed = set(rows) | ({(i - 1) % total for i in rows} if kl_pairs else set())
    n_negatives = max(columns, default=-1) + 1
    segments = {i: record_segments(tokenizer, records[i], n_negatives, settings) for i in needed}
    examples = [join_example(records[i]["id"], records[i].get("label"), segments[i],
                             segments[(i - 1) % total] if kl_pairs else None, columns, settings, source, i + 1)
                for i in rows]
    return examples, sum(e.truncated for ex in examples for e in ex.rows)


def shared_prompt(rows: list[Encoded]) -> bool:
    """Whether every row of an example starts with the same prompt (false only when the recipe's
    truncation cut the prompt for some responses and not others)."""
    n = rows[0].n_prompt
    return all(r.n_prompt == n and r.ids[:n] == rows[0].ids[:n] for r in rows[1:])
