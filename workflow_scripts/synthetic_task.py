"""Synthetic GSM8K-style arithmetic word problems and a pre-training corpus.

Problems have one or two steps with operands in [1, max_operand]; solutions are one line per
step ("7 + 5 = 12") and end with "#### <answer>" (`format: plain`). The same problems can be written
in the columns and conventions of the papers' datasets, so that the data stage reads them through the
mappings those datasets need:

- `gsm8k`: question / answer, steps with calculator annotations ("7 + 5 = <<7+5=12>>12"), "#### 12";
- `metamathqa`: query / response / type / original_question, the response ending "The answer is: 12";
- `math`: MATH-500's problem / solution / answer / subject / level / unique_id, the solution in LaTeX
  ending in `\boxed{12}`;
- `ultrafeedback`: UltraFeedback-binarized's prompt / prompt_id / chosen / rejected / messages /
  score_chosen / score_rejected, chosen and rejected as [user, assistant] chat messages (the rejected
  answer's steps are off by a few);
- `argilla_ultrafeedback`: argilla/ultrafeedback-binarized-preferences-cleaned's source / prompt / chosen /
  chosen-rating / chosen-model / rejected / rejected-rating / rejected-model (chat messages as above);
- `numina_cot`: NuminaMath-CoT's source / problem / solution (ending in `\boxed{12}`) / messages;
- `minervamath`: math-ai/minervamath's question / answer (the final answer only);
- `olympiadbench`: math-ai/olympiadbench's id / question / solution and final_answer (one-element lists,
  the answer as `$12$`) / answer_type / subject / language;
- `aime`: Maxwell-Jia/AIME_2024's ID / Problem / Solution / Answer (an integer);
- `amc`: math-ai/amc23's id / question / answer (a float) / url;
- `alpaca_eval`: tatsu-lab/alpaca_eval's instruction / output / generator / dataset;
- `dft_selfplay`: the DFT seeds' released self-play sets (PenGuln/DFT generator/merge_and_upload.py):
  prompt / real / generated_0 ... generated_3, each of real and generated_<i> a [user, assistant]
  conversation (the negatives' steps off by 1 to 3);
- `mt_bench`: HuggingFaceH4/mt_bench_prompts' prompt (two user turns: the problem, then a follow-up on the
  answer) / prompt_id / category (MT-Bench's eight, in turn) / reference (one answer per turn for math,
  reasoning and coding, empty for the others, as that dataset has it);
- the data of lm-eval's tasks, each in its hub dataset's columns, the answer among the next numbers:
  `arc` (allenai/ai2_arc: id / question / choices {text, label} / answerKey), `mmlu` (cais/mmlu: question /
  subject / choices / answer), `hellaswag` (Rowan/hellaswag: ind / activity_label / ctx_a / ctx_b / ctx /
  endings / source_id / split / split_type / label), `winogrande` (sentence with a blank / option1 /
  option2 / answer "1" or "2"), `truthfulqa_mc` (truthful_qa multiple_choice: question / mc1_targets /
  mc2_targets, each {choices, labels}, the true answers first), `ifeval` (google/IFEval: key / prompt /
  instruction_id_list / kwargs, two of IFEval's instructions per prompt), `hendrycks_math`
  (EleutherAI/hendrycks_math, which minerva_math and hendrycks_math read: problem / level / type /
  solution in LaTeX ending in `\boxed{12}`).

`HUB_FORMATS` names the format of each hub dataset the paper configs read, `TASK_FORMATS` that of the
data of lm-eval's tasks.
"""
from __future__ import annotations

import hashlib
import random

HUB_FORMATS = {
    "openai/gsm8k": "gsm8k", "meta-math/MetaMathQA": "metamathqa", "HuggingFaceH4/MATH-500": "math",
    "HuggingFaceH4/ultrafeedback_binarized": "ultrafeedback",
    "argilla/ultrafeedback-binarized-preferences-cleaned": "argilla_ultrafeedback",
    "AI-MO/NuminaMath-CoT": "numina_cot", "math-ai/minervamath": "minervamath",
    "math-ai/olympiadbench": "olympiadbench", "Maxwell-Jia/AIME_2024": "aime", "math-ai/amc23": "amc",
    "tatsu-lab/alpaca_eval": "alpaca_eval", "HuggingFaceH4/mt_bench_prompts": "mt_bench",
    "siqi00/mistral_ultrafeedback_unhelpful_chatprompt_0.7_1.0_50_320": "dft_selfplay",
}
FORMATS = ("plain", "gsm8k", "metamathqa", "math", "ultrafeedback", "argilla_ultrafeedback", "numina_cot", "minervamath",
           "olympiadbench", "aime", "amc", "alpaca_eval", "arc", "mmlu", "hellaswag", "winogrande", "truthfulqa_mc",
           "ifeval", "mt_bench", "hendrycks_math", "dft_selfplay")  # what in_format writes (the schema's `format` enum)
TASK_FORMATS = {"gsm8k": "gsm8k", "arc_challenge": "arc", "arc_easy": "arc", "hellaswag": "hellaswag",
                "winogrande": "winogrande", "truthfulqa_mc1": "truthfulqa_mc", "truthfulqa_mc2": "truthfulqa_mc",
                "ifeval": "ifeval", "mmlu_abstract_algebra": "mmlu", "minerva_math_algebra": "hendrycks_math",
                "hendrycks_math_algebra": "hendrycks_math"}  # lm-eval task -> its data's format
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
NAMES = ["Tom", "Ann", "Sam", "Mia", "Leo", "Zoe", "Max", "Ivy"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "eggs"]


def make_problem(rng: random.Random, max_operand: int) -> dict:
    """One problem: {"question", "answer"} with a step-by-step answer ending in '#### N'."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
    kind = rng.choice(["add", "sub", "add_sub"])
    if kind == "add":
        total = a + b
        question = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        steps = [f"{a} + {b} = {total}"]
    elif kind == "sub":
        a, b = max(a, b), min(a, b)
        total = a - b
        question = f"{name} has {a} {item}. {name} gives away {b}. How many {item} are left?"
        steps = [f"{a} - {b} = {total}"]
    else:
        mid = a + b
        c = rng.randint(1, min(mid, max_operand))
        total = mid - c
        question = (f"{name} has {a} {item}. {name} gets {b} more, then gives away {c}. "
                    f"How many {item} does {name} have now?")
        steps = [f"{a} + {b} = {mid}", f"{mid} - {c} = {total}"]
    return {"question": question, "answer": "\n".join(steps + [f"#### {total}"])}


def make_splits(seed: int, sizes: dict[str, int], max_operand: int) -> dict[str, list[dict]]:
    """Disjoint splits of distinct questions; each record carries its source index."""
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[dict] = []
    total = sum(sizes.values())
    for _ in range(total * 50):
        if len(problems) == total:
            break
        p = make_problem(rng, max_operand)
        if p["question"] not in seen:
            seen.add(p["question"])
            problems.append(p)
    if len(problems) < total:
        raise ValueError(f"only {len(problems)} distinct problems for {total} requested; raise max_operand")
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = [dict(p, index=i) for i, p in enumerate(problems[start:start + n])]
        start += n
    return out


def _steps(answer: str) -> tuple[list[tuple[str, str, str, str]], str]:
    """((a, op, b, result) per step, final answer) of a plain solution."""
    *lines, last = answer.split("\n")
    steps = []
    for line in lines:
        expr, result = line.split(" = ")
        a, op, b = expr.split(" ")
        steps.append((a, op, b, result))
    return steps, last.removeprefix("#### ")


def _wrong(answer: str, index: int) -> str:
    """A plain solution whose results are off by 1 to 3 (deterministic per problem)."""
    steps, total = _steps(answer)
    shift = index % 3 + 1
    lines = [f"{a} {op} {b} = {int(r) + shift}" for a, op, b, r in steps]
    return "\n".join(lines + [f"#### {int(total) + shift}"])


def _chat(question: str, solution: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": solution}]


def _latex(steps: list[tuple[str, str, str, str]], total: str) -> str:
    work = ", then ".join(f"${a} {op} {b} = {r}$" for a, op, b, r in steps)
    return f"We compute {work}. The answer is $\\boxed{{{total}}}$."


def in_format(problem: dict, fmt: str) -> dict:
    """A plain problem ({question, answer, index}) as a record of the named dataset format."""
    q, answer, index = problem["question"], problem["answer"], problem["index"]
    steps, total = _steps(answer)
    if fmt == "plain":
        return problem
    if fmt == "gsm8k":
        lines = [f"{a} {op} {b} = <<{a}{op}{b}={r}>>{r}" for a, op, b, r in steps]
        return {"question": q, "answer": "\n".join(lines + [f"#### {total}"])}
    if fmt == "metamathqa":
        lines = [f"{a} {op} {b} = {r}" for a, op, b, r in steps]
        return {"query": q, "response": "\n".join(lines + [f"#### {total}", f"The answer is: {total}"]),
                "type": "GSM_AnsAug", "original_question": q}
    if fmt == "math":
        return {"problem": q, "solution": _latex(steps, total), "answer": total,
                "subject": "Prealgebra", "level": 1, "unique_id": f"test/prealgebra/{index}.json"}
    if fmt in ("ultrafeedback", "argilla_ultrafeedback"):
        chosen, rejected = _chat(q, answer), _chat(q, _wrong(answer, index))
        if fmt == "argilla_ultrafeedback":
            return {"source": "synthetic", "prompt": q, "chosen": chosen, "chosen-rating": 5.0,
                    "chosen-model": "reference", "rejected": rejected, "rejected-rating": 2.0,
                    "rejected-model": "off-by-some"}
        return {"prompt": q, "prompt_id": hashlib.sha256(q.encode()).hexdigest(), "chosen": chosen,
                "rejected": rejected, "messages": chosen, "score_chosen": 8.0, "score_rejected": 3.0}
    if fmt == "dft_selfplay":
        return {"prompt": q, "real": _chat(q, answer), **{f"generated_{k}": _chat(q, _wrong(answer, index + k))
                                                          for k in range(4)}}
    return _competition_format(q, steps, total, index, fmt)


def _competition_format(q: str, steps: list, total: str, index: int, fmt: str) -> dict:
    """The math competition and instruction datasets' records (see the module docstring)."""
    if fmt == "numina_cot":
        solution = _latex(steps, total)
        return {"source": "synthetic", "problem": q, "solution": solution, "messages": _chat(q, solution)}
    if fmt == "minervamath":
        return {"question": q, "answer": total}
    if fmt == "olympiadbench":
        return {"id": index, "question": q, "solution": [_latex(steps, total)], "final_answer": [f"${total}$"],
                "answer_type": "Numerical", "subject": "Math", "language": "English"}
    if fmt == "aime":
        return {"ID": f"2024-I-{index}", "Problem": q, "Solution": _latex(steps, total), "Answer": int(total)}
    if fmt == "amc":
        return {"id": index, "question": q, "answer": float(total), "url": f"https://example.invalid/{index}"}
    if fmt == "alpaca_eval":
        return {"instruction": q, "output": _latex(steps, total), "generator": "gpt4_1106_preview",
                "dataset": "synthetic"}
    if fmt == "hendrycks_math":
        return {"problem": q, "level": "Level 1", "type": "Algebra", "solution": _latex(steps, total)}
    if fmt == "mt_bench":
        category = MT_BENCH_CATEGORIES[index % len(MT_BENCH_CATEGORIES)]
        graded = category in ("math", "reasoning", "coding")
        return {"prompt": [q, "Now double your answer. What do you get?"], "prompt_id": index, "category": category,
                "reference": [f"The answer is {total}.", f"Doubled, it is {2 * int(total)}."] if graded else []}
    return _benchmark_format(q, total, index, fmt)


def _options(total: str, index: int, n: int) -> tuple[list[str], int]:
    """n answer options, the correct one at position index % n among the next numbers, and that position."""
    options = [str(int(total) + k) for k in range(1, n)]
    options.insert(index % n, total)
    return options, index % n


IFEVAL_INSTRUCTIONS = [  # (instruction id, its kwargs, the sentence the prompt adds), IFEval's own wording
    ("punctuation:no_comma", {}, "In your entire response, refrain from the use of any commas."),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 40}, "Answer with less than 40 words."),
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 2},
     "Your response should contain at least 2 sentences."),
    ("detectable_format:title", {}, "Your answer must contain a title, wrapped in double angular brackets, such as "
     "<<poem of joy>>."),
]


def _benchmark_format(q: str, total: str, index: int, fmt: str) -> dict:
    """The records of lm-eval's benchmark datasets (TASK_FORMATS), a problem as a question with options."""
    if fmt == "arc":
        options, gold = _options(total, index, 4)
        return {"id": f"Synthetic_{index}", "question": q, "choices": {"text": options, "label": ["A", "B", "C", "D"]},
                "answerKey": "ABCD"[gold]}
    if fmt == "mmlu":
        options, gold = _options(total, index, 4)
        return {"question": q, "subject": "synthetic", "choices": options, "answer": gold}
    if fmt == "hellaswag":
        options, gold = _options(total, index, 4)
        return {"ind": index, "activity_label": "Arithmetic", "ctx_a": q, "ctx_b": "the answer is", "ctx": f"{q} the answer is",
                "endings": options, "source_id": f"synthetic~{index}", "split": "val", "split_type": "indomain",
                "label": str(gold)}
    if fmt == "winogrande":
        options, gold = _options(total, index, 2)
        return {"sentence": f"{q} The answer is _ {ITEMS[index % len(ITEMS)]}.", "option1": options[0],
                "option2": options[1], "answer": str(gold + 1)}
    if fmt == "truthfulqa_mc":  # mc1: one true answer, first; mc2: the true answers first, then the false
        wrong = [str(int(total) + k) for k in (1, 2, 3)]
        return {"question": q, "mc1_targets": {"choices": [total, *wrong], "labels": [1, 0, 0, 0]},
                "mc2_targets": {"choices": [total, f"{total}.0", *wrong], "labels": [1, 1, 0, 0, 0]}}
    if fmt == "ifeval":  # two of IFEval's instructions after the question (kwargs with IFEval's null-filled keys)
        chosen = [IFEVAL_INSTRUCTIONS[(index + k) % len(IFEVAL_INSTRUCTIONS)] for k in (0, 1)]
        keys = sorted({k for _, kwargs, _ in IFEVAL_INSTRUCTIONS for k in kwargs})
        return {"key": 1000 + index, "prompt": " ".join([q, *(text for _, _, text in chosen)]),
                "instruction_id_list": [name for name, _, _ in chosen],
                "kwargs": [{k: kwargs.get(k) for k in keys} for _, kwargs, _ in chosen]}
    raise ValueError(f"unknown format {fmt!r}")


def pretraining_corpus(seed: int, n_documents: int, max_operand: int) -> list[str]:
    """Plain-text documents: arithmetic facts and story sentences, no question/solution pairs."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_documents):
        lines = []
        for _ in range(rng.randint(3, 6)):
            a, b = rng.randint(0, 2 * max_operand), rng.randint(0, max_operand)
            if rng.random() < 0.5:
                lines.append(f"{a} + {b} = {a + b}")
            else:
                a, b = max(a, b), min(a, b)
                lines.append(f"{a} - {b} = {a - b}")
            if rng.random() < 0.4:
                lines.append(f"{rng.choice(NAMES)} has {rng.randint(1, max_operand)} {rng.choice(ITEMS)}.")
        docs.append("\n".join(lines))
    return docs
