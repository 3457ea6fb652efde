"""Pairwise judges for the alpaca_eval and pairwise evals.

A judge compares a reference answer (output_1) with the evaluated model's answer (output_2) to the
same instruction and returns alpaca_eval's preference: 1 = the reference is better, 2 = the model
is better, 1.5 = a draw (a fraction in between for a weighted judge).

- `answer_check`: offline and deterministic, for data with reference answers (the synthetic task):
  a correct final answer (ToRA rules) beats a wrong one; both right or both wrong is a draw.
- `local`: a judge model run by the generation backends (HF or vLLM), prompted with an alpaca_eval
  annotator's template; greedy; it judges both orders and a preference that flips with the order is a
  draw (position bias).
- `annotator`: alpaca_eval's own PairwiseAnnotator with one of its annotator configs, over an
  OpenAI-compatible endpoint (OpenAI, or a served model such as `vllm serve`); the key is read by
  alpaca_eval from OPENAI_API_KEY and never passed on a command line or written.
- `fastchat`: FastChat's MT-Bench pairwise protocol (workflow_scripts/mt_bench.py) on multi-turn
  answers, by a configured model run here (`via: local`) or a served chat model (`via: api`, the key
  from OPENAI_API_KEY); its results are FastChat's win / loss / tie, not alpaca_eval preferences.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import yaml

from .answers import check

DRAW = 1.5


class JudgeModel(NamedTuple):
    """A configured model a judge runs here, as its config entry loads it."""
    path: str
    revision: str | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None


def annotator_config(name: str) -> tuple[dict, Path]:
    """An alpaca_eval annotator config (its single entry) and the folder its paths are relative to."""
    import alpaca_eval

    root = Path(alpaca_eval.__file__).parent / "evaluators_configs"
    path = root / name / "configs.yaml"
    if not path.is_file():
        known = sorted(p.name for p in root.iterdir() if (p / "configs.yaml").is_file())
        raise ValueError(f"unknown alpaca_eval annotator {name!r} (known: {known})")
    (entry,) = yaml.safe_load(path.read_text()).values()
    return entry, root


class AnswerCheckJudge:
    description = "answer check (offline, deterministic): a correct final answer beats a wrong one, else a draw"

    def judge(self, items: list[dict]) -> list[dict]:
        out = []
        for it in items:
            if not isinstance(it.get("truth"), str):
                raise ValueError(f"id {it['id']!r}: the answer_check judge needs the record's reference answer")
            ref_ok, model_ok = check(it["output_1"], it["truth"])[1], check(it["output_2"], it["truth"])[1]
            out.append({"preference": DRAW if ref_ok == model_ok else (2.0 if model_ok else 1.0),
                        "reference_correct": ref_ok, "model_correct": model_ok})
        return out


class LocalJudge:
    """A configured model answers an annotator template (whose answer is one of two identifiers), greedily."""

    def __init__(self, spec: dict, model: JudgeModel):
        entry, root = annotator_config(spec["annotator"])
        tokens = (entry.get("completion_parser_kwargs") or {}).get("denominator_tokens")
        if not tokens or len(tokens) != 2:
            raise ValueError(f"annotator {spec['annotator']!r}: the local judge needs a template answered by one of "
                             "two identifiers (alpaca_eval's *_clf_* / weighted_* configs)")
        self.labels = {tokens[0]: 1.0, tokens[1]: 2.0}
        self.template = (root / entry["prompt_template"]).read_text()
        self.description = (f"local judge {spec['model']} ({spec['backend']}, greedy, both orders) with alpaca_eval "
                            f"template {spec['annotator']}")
        self.chat = LocalChat({**spec, "max_new_tokens": 4}, model)

    def _messages(self, instruction: str, first: str, second: str) -> list[dict]:
        from alpaca_eval.utils import prompt_to_chatml

        text = self.template.replace("{instruction}", instruction).replace("{output_1}", first)
        return prompt_to_chatml(text.replace("{output_2}", second))

    def _verdict(self, text: str) -> float | None:
        word = re.match(r"\s*(\S+)", text)
        return self.labels.get(word[1]) if word else None

    def judge(self, items: list[dict]) -> list[dict]:
        texts = self.chat([self._messages(it["instruction"], a, b) for it in items
                           for a, b in ((it["output_1"], it["output_2"]), (it["output_2"], it["output_1"]))])
        out = []
        for i in range(len(items)):
            straight, swapped = self._verdict(texts[2 * i]), self._verdict(texts[2 * i + 1])
            swapped = None if swapped is None else 3.0 - swapped
            consistent = straight is not None and straight == swapped
            out.append({"preference": straight if consistent else DRAW, "judge_outputs": texts[2 * i: 2 * i + 2],
                        "parsed": straight is not None and swapped is not None})
        return out


class AnnotatorJudge:
    """alpaca_eval's PairwiseAnnotator with a named annotator config; optionally another served model name."""

    def __init__(self, spec: dict, seed: int):
        entry, root = annotator_config(spec["annotator"])
        entry = dict(entry, prompt_template=str(root / entry["prompt_template"]))
        if spec.get("model"):  # a served model: its chat endpoint, like alpaca_eval's own vLLM-served configs
            entry["completions_kwargs"] = dict(entry["completions_kwargs"], model_name=spec["model"],
                                               requires_chatml=True)
        if spec.get("base_url"):
            entry["completions_kwargs"] = dict(entry["completions_kwargs"], openai_api_base=spec["base_url"])
        self.config = {spec["annotator"]: entry}
        self.spec, self.seed = spec, seed
        self.description = (f"alpaca_eval annotator {spec['annotator']} ({entry['completions_kwargs']['model_name']}"
                            f"{' at ' + spec['base_url'] if spec.get('base_url') else ''})")

    def judge(self, items: list[dict]) -> list[dict]:
        from alpaca_eval.annotators import PairwiseAnnotator

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / self.spec["annotator"] / "configs.yaml"
            path.parent.mkdir()
            path.write_text(yaml.safe_dump(self.config))
            annotator = PairwiseAnnotator(annotators_config=str(path), seed=self.seed, caching_path=None,
                                          is_avoid_reannotations=False)
            rows = annotator.annotate_head2head(
                outputs_1=[{"instruction": it["instruction"], "output": it["output_1"], "generator": "reference"}
                           for it in items],
                outputs_2=[{"instruction": it["instruction"], "output": it["output_2"], "generator": "model"}
                           for it in items], is_ordered=True)
        return [{"preference": float(r["preference"]) if r.get("preference") is not None else None,
                 "raw_completion": r.get("raw_completion")} for r in rows]


class LocalChat:
    """Greedy replies of a configured model to chat conversations (message lists), through its chat template."""

    def __init__(self, spec: dict, model: JudgeModel):
        from .generation import LazyBackend
        from .models import load_tokenizer

        self.tokenizer = load_tokenizer(model.path, model.revision, model.trust_remote_code, model.chat_template)
        self.max_new_tokens = spec["max_new_tokens"]
        self.backend = LazyBackend(spec["backend"], model.path, model.revision,
                                   {**spec, "temperature": 0.0, "stop": []}, model.trust_remote_code)

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        from .backends import Request, Sampling
        from .encoding import encode_prompt

        greedy = Sampling(0.0, 1.0, 0, self.max_new_tokens, ())
        requests = [Request(encode_prompt(self.tokenizer, self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)), 0, greedy) for messages in conversations]
        return [c.text for c in self.backend.generate(requests)]


class ApiChat:
    """Replies of a served chat model (OpenAI or an OpenAI-compatible endpoint) at temperature 0, as FastChat
    asks its API judges; a call that still fails after the client's retries answers FastChat's `$ERROR$`."""
    ERROR_OUTPUT = "$ERROR$"

    def __init__(self, spec: dict):
        from openai import OpenAI

        self.client = OpenAI(base_url=spec["base_url"], max_retries=spec["max_retries"])  # key: OPENAI_API_KEY
        self.model, self.max_new_tokens = spec["model"], spec["max_new_tokens"]

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        import openai

        out = []
        for messages in conversations:
            try:
                reply = self.client.chat.completions.create(model=self.model, messages=messages, n=1, temperature=0,
                                                            max_tokens=self.max_new_tokens)
                out.append(reply.choices[0].message.content or "")
            except openai.OpenAIError as e:
                print(f"judge call failed: {e}")
                out.append(self.ERROR_OUTPUT)
        return out


class FastChatJudge:
    """FastChat's MT-Bench pairwise judgements (both orders, every turn) of the model against the reference."""

    def __init__(self, spec: dict, model: JudgeModel | None):
        local = spec["via"] == "local"
        self.chat = LocalChat(spec, model) if local else ApiChat(spec)
        where = f"run here ({spec['backend']})" if local else f"at {spec['base_url'] or 'OpenAI'}"
        self.description = (f"FastChat MT-Bench pairwise judge {spec['model']} {where}, greedy, both orders of "
                            "every turn; a verdict that flips with the order is a tie, failures are left out")

    def judge(self, items: list[dict]) -> list[dict]:
        from .mt_bench import play

        def complete(prompts: list[tuple[str, str]]) -> list[str]:
            return self.chat([[{"role": "system", "content": system}, {"role": "user", "content": user}]
                              for system, user in prompts])

        results = play([{"id": it["id"], "question": it["question"], "model_1": it["model_turns"],
                         "model_2": it["reference_turns"]} for it in items], complete)
        by_id: dict[str, list] = {}
        for r in results:
            by_id.setdefault(r["question_id"], []).append(r)
        return [{"matches": by_id[it["id"]]} for it in items]


def load_judge(spec: dict, seed: int, model: JudgeModel | None = None):
    """The judge of an eval's `judge` entry; `model`: the configured model it runs here, if any."""
    if spec["kind"] == "fastchat":
        return FastChatJudge(spec, model)
    if spec["kind"] == "answer_check":
        return AnswerCheckJudge()
    if spec["kind"] == "local":
        return LocalJudge(spec, model)
    if spec["kind"] == "annotator":
        return AnnotatorJudge(spec, seed)
    raise ValueError(f"unknown judge kind {spec['kind']!r}")
