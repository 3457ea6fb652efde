"""Generation backends behind one interface: HF `generate` and vLLM.

A `Request` carries prompt token ids (rendered and tokenised once, by the caller, so both backends
see the same ids), its own sampling settings and its own seed. A sample depends only on
(prompt, settings, seed): not on batch size, batch order or the other requests. Completions have
EOS (the tokenizer's and the generation config's) and special tokens removed, are cut before the
first stop string (which is not kept; a stop string that is one special token stops on its id), and
keep leading whitespace (callers strip it where the recipe does).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .models import default_device, load_model, load_tokenizer, vllm_engine_args

BACKENDS = ("hf", "vllm")


def request_seed(key: str, seed: int) -> int:
    """A 63-bit seed derived from a request key (an example id, plus a step for multi-step requests) and the run seed."""
    digest = hashlib.sha256(f"{key}\0{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float = 1.0
    top_k: int = 0                 # 0 = off
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()


@dataclass
class Request:
    prompt_ids: list[int]
    seed: int
    sampling: Sampling


@dataclass
class Completion:
    text: str
    finish_reason: str             # "stop" (EOS or a stop string) or "length"
    stop_string: str | None = None  # the stop string that ended it, if one did


def split_stops(tokenizer, stop: tuple[str, ...]) -> tuple[list[int], tuple[str, ...]]:
    """Stop strings that are one special token of the tokenizer (`<|eot_id|>`, `<|im_end|>`) become stop
    token ids, since completions are decoded without special tokens; the others stay strings."""
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()
                                                   if t.special}
    ids = [tokenizer.convert_tokens_to_ids(s) for s in stop if s in special]
    return ids, tuple(s for s in stop if s not in special)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, str | None]:
    """Text before the earliest stop string, and that string (None if there is none)."""
    hits = [(text.index(s), s) for s in stop if s in text]
    if not hits:
        return text, None
    at, s = min(hits)
    return text[:at], s


class HFBackend:
    """transformers `generate`, one sampler per row (see PerRequestSampler)."""

    name = "hf"

    def __init__(self, model: str, revision: str | None, dtype: str, batch_size: int, trust_remote_code: bool = False,
                 attn_implementation: str | None = None):
        self.tokenizer = load_tokenizer(model, revision, trust_remote_code)
        self.model = load_model(model, revision, dtype, trust_remote_code, attn_implementation)
        self.model.to(default_device()).eval()
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id  # chat models may end turns with another token
        self.eos_ids = [self.tokenizer.eos_token_id] + [e for e in (eos if isinstance(eos, list) else [eos])
                                                        if e is not None and e != self.tokenizer.eos_token_id]

    def generate(self, requests: list[Request]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}  # one generate call needs one length limit and stop list
        for i, r in enumerate(requests):
            groups.setdefault((r.sampling.max_new_tokens, r.sampling.stop), []).append(i)
        for (max_new_tokens, stop), index in groups.items():
            for start in range(0, len(index), self.batch_size):
                chunk = index[start: start + self.batch_size]
                for i, c in zip(chunk, self._batch([requests[i] for i in chunk], max_new_tokens, stop)):
                    out[i] = c
        return out

    def _batch(self, requests: list[Request], max_new_tokens: int, stop: tuple[str, ...]) -> list[Completion]:
        tok = self.tokenizer
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, r in enumerate(requests):  # left padding
            ids[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[row, width - len(r.prompt_ids):] = 1
        sampler = PerRequestSampler([r.seed for r in requests], [r.sampling for r in requests])
        stop_ids, stop = split_stops(tok, stop)
        end_ids = self.eos_ids + [i for i in stop_ids if i not in self.eos_ids]
        with torch.inference_mode():
            generated = self.model.generate(
                input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device), do_sample=False,
                max_new_tokens=max_new_tokens, logits_processor=LogitsProcessorList([sampler]),
                stop_strings=list(stop) or None, tokenizer=tok if stop else None,
                pad_token_id=tok.pad_token_id, eos_token_id=end_ids,
                temperature=None, top_k=None, top_p=None)
        results = []
        for row in generated[:, width:].tolist():
            reason = "length"
            ends = [row.index(e) for e in end_ids if e in row]
            if ends:
                row, reason = row[: min(ends)], "stop"
            text, hit = cut_at_stop(tok.decode(row, skip_special_tokens=True), stop)
            results.append(Completion(text, "stop" if hit else reason, hit))
        return results


class PerRequestSampler(LogitsProcessor):
    """Samples each row with its own generator and settings; returns logits that greedy search follows.

    The warpers (temperature, top-k, top-p) are applied per row; the sampled token gets 0 and every
    other token -inf, so `generate(do_sample=False)` emits exactly the sampled token. A row with
    temperature 0 is greedy.
    """

    def __init__(self, seeds: list[int], settings: list[Sampling]):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.warpers = []
        for s in settings:
            warpers = [] if s.temperature == 0 else [TemperatureLogitsWarper(s.temperature)]
            if s.temperature and s.top_k > 0:
                warpers.append(TopKLogitsWarper(s.top_k))
            if s.temperature and s.top_p < 1.0:
                warpers.append(TopPLogitsWarper(s.top_p))
            self.warpers.append(warpers if s.temperature else None)

    def __call__(self, input_ids, scores):
        scores = scores.float()
        chosen = torch.empty(scores.shape[0], dtype=torch.long)
        for row, (gen, warpers) in enumerate(zip(self.generators, self.warpers)):
            row_scores = scores[row: row + 1]
            if warpers is None:
                chosen[row] = row_scores.argmax(-1)[0]
                continue
            for warp in warpers:
                row_scores = warp(input_ids[row: row + 1], row_scores)
            probs = torch.softmax(row_scores, dim=-1)
            chosen[row] = torch.multinomial(probs.cpu(), 1, generator=gen)[0, 0]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), chosen.to(scores.device)] = 0.0
        return out


class VLLMBackend:
    """vLLM's offline engine with one seeded SamplingParams per request (vLLM #11953, #17524, #51226).

    Placement as `models.vllm_engine_args` says (on GPU it takes `gpu_memory_utilization`). vLLM refuses a
    whole batch when one prompt fills the context (`max_model_len`); such prompts are cut to their end
    (`over_long_prompts: truncate`, counted in `prompts_cut`: room is left for the response's token limit,
    or half the context) or refused before the batch runs (`error`). A response that would run past the
    context stops there (finish reason `length`), as vLLM does.
    """

    name = "vllm"

    def __init__(self, model: str, revision: str | None, dtype: str, max_model_len: int | None,
                 gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False,
                 over_long_prompts: str = "truncate"):
        from vllm import LLM

        self.tokenizer = load_tokenizer(model, revision, trust_remote_code)
        self.llm = LLM(model=model, revision=revision, tokenizer=model, tokenizer_revision=revision, dtype=dtype,
                       seed=0, max_model_len=max_model_len, trust_remote_code=trust_remote_code,
                       **vllm_engine_args(gpu_memory_utilization))
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.over_long_prompts, self.prompts_cut = over_long_prompts, 0

    def fit(self, requests: list[Request]) -> list[Request]:
        """The requests with every prompt that fills the context cut to its end, or refused (see the class)."""
        limit = self.max_model_len
        over = [r for r in requests if len(r.prompt_ids) >= limit]
        if over and self.over_long_prompts == "error":
            raise ValueError(f"{len(over)} of {len(requests)} prompts have {limit} tokens or more, the context "
                             f"(max_model_len); over_long_prompts: truncate keeps their end")
        self.prompts_cut += len(over)
        return [replace(r, prompt_ids=r.prompt_ids[-max(limit - r.sampling.max_new_tokens, limit // 2):])
                if len(r.prompt_ids) >= limit else r for r in requests]

    def generate(self, requests: list[Request]) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = self.fit(requests)
        params = []
        for r in requests:
            stop_ids, stop = split_stops(self.tokenizer, r.sampling.stop)
            params.append(SamplingParams(n=1, seed=r.seed, temperature=r.sampling.temperature, top_p=r.sampling.top_p,
                                         top_k=r.sampling.top_k if r.sampling.top_k > 0 else -1,
                                         max_tokens=r.sampling.max_new_tokens, stop=list(stop),
                                         stop_token_ids=stop_ids, skip_special_tokens=True))
        prompts = [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for out in outputs:
            o = out.outputs[0]
            hit = o.stop_reason if isinstance(o.stop_reason, str) else None
            results.append(Completion(o.text, "length" if o.finish_reason == "length" else "stop", hit))
        return results


def load_backend(name: str, model: str, revision: str | None, p: dict, trust_remote_code: bool = False):
    """The backend named in a generation's config: `p` holds the engine settings the backend reads (hf: dtype,
    batch_size, attn_implementation; vllm: dtype, max_model_len, gpu_memory_utilization, over_long_prompts),
    filled with their defaults by the config's schema."""
    if name == "hf":
        return HFBackend(model, revision, p["dtype"], p["batch_size"], trust_remote_code, p["attn_implementation"])
    if name == "vllm":
        return VLLMBackend(model, revision, p["dtype"], p["max_model_len"], p["gpu_memory_utilization"],
                           trust_remote_code, p["over_long_prompts"])
    raise ValueError(f"unknown generation backend {name!r}; choose from {BACKENDS}")
