"""The plan of the evaluations of every instance the tables evaluate (a run's seed or a base model):
lm-eval-harness suites, answer groups (one model load answers several sets), math answer checking, and
judged head-to-head comparisons."""
from __future__ import annotations

import os

from ..eval_kinds import runs_model_here
from ..nltk_resources import RESOURCE, needs_punkt
from .base import NO_MODEL, ModelOf, ModelRef, R, Section, code, engine_env, js, pattern, python, split_file
from .instances import answer_groups, group_of, head2head_reference, subject_model_name


class Instances(Section):
    """What every eval of an instance shares: its model and the answer sets it generates."""

    def __init__(self, config: dict, basedir: str):
        super().__init__(config, basedir)
        self.groups = answer_groups(config)  # group name -> the answer sets one job generates together
        self.group_of = group_of(config)  # answer set -> its group
        self.model = ModelOf(lambda w: self.instance_model(w.subject))

    def instance_model(self, subject: str) -> ModelRef:
        """An evaluated instance's model: a trained seed's folder or a configured base model."""
        name, instance = subject.split("/")
        if instance == "base":
            return self.model_ref(name)
        path = f"{R}/train/{subject}/model"
        return ModelRef(path, None, [path], self.model_flags(subject_model_name(self.config, subject)))

    def answers_dir(self, subject: str, group: str) -> str:
        """The folder of an answer group's sets, answered by an evaluated instance (rule answers)."""
        return f"{R}/answers/{subject}/{group}"

    def answers_file(self, subject: str, answer_set: str) -> str:
        return f"{self.answers_dir(subject, self.group_of[answer_set])}/{answer_set}.jsonl"

    def answer_set_split(self, answer_set: str) -> str:
        a = self.config["answer_sets"][answer_set]
        return split_file(a["dataset"], a["split"])

    def evals_of_kind(self, *kinds: str) -> str:
        """A wildcard pattern matching the names of the evals of these kinds (a rule per kind)."""
        return pattern(name for name, e in self.config["evals"].items() if e["kind"] in kinds)


class LmEval(Instances):
    """lm-eval-harness suites, with the task YAMLs of a synthetic split and IFEval's NLTK data."""

    def tasks_data(self, w) -> str:
        synthetic = self.config["evals"][w.eval]["synthetic"]
        return split_file(synthetic["dataset"], synthetic["split"])

    def punkt_tab_dir(self) -> str:
        """Where rule nltk_data puts NLTK's punkt_tab (IFEval's checkers read it)."""
        return os.path.join(self.config["nltk_data"], RESOURCE)

    @staticmethod
    def nltk_outdir(w, output) -> str:
        return output[0][: -len(RESOURCE)].rstrip("/")

    def inputs(self, w) -> dict:
        e = self.config["evals"][w.eval]
        inputs = {"script": code("evaluate"), "model": self.model.files(w)}
        if e.get("synthetic"):
            inputs["tasks"] = f"{R}/eval_tasks/{w.eval}"
        inputs["task_data"] = sorted({f for t in e["tasks"] for f in (t["data_files"] or {}).values()})
        if any(needs_punkt(t["task"]) for t in e["tasks"]):
            inputs["nltk"] = self.punkt_tab_dir()
        return inputs

    def spec(self, w) -> str:
        return js({k: v for k, v in self.config["evals"][w.eval].items() if k not in ("synthetic", "threads")})

    def tasks_arg(self, w, input) -> str:
        return f"--tasks-dir {input.tasks}" if "tasks" in input.keys() else ""

    def nltk_arg(self, w, input) -> str:
        return f"--nltk-data {self.config['nltk_data']}" if "nltk" in input.keys() else ""

    def python(self, w) -> str:
        return python(self.config["evals"][w.eval])

    def env(self, w) -> str:
        return engine_env(self.config["evals"][w.eval], "../envs/eval.yaml")


class AnswerGroups(Instances):
    """One response per prompt to each answer set of a group, from a model loaded once for the group."""

    def first(self, w) -> dict:
        """The settings of the group's first set: the engine settings all its sets share."""
        return self.config["answer_sets"][self.groups[w.answer_group][0]]

    def data(self, w) -> list[str]:
        return [self.answer_set_split(a) for a in self.groups[w.answer_group]]

    def sets(self, w) -> str:
        """The group's sets as its job reads them: name, split, seed and the settings that change the answers."""
        drop = ("threads", "dataset", "split", "seed")
        return js([{"name": a, "data": self.answer_set_split(a), "seed": self.config["answer_sets"][a]["seed"],
                    "params": {k: v for k, v in self.config["answer_sets"][a].items() if k not in drop}}
                   for a in self.groups[w.answer_group]])

    def python(self, w) -> str:
        return python(self.first(w))

    def threads(self, w) -> int:
        return self.first(w)["threads"]


class MathEval(Instances):
    """Answer checking of an instance's answer sets."""

    def answers(self, w) -> list[str]:
        sets = self.config["evals"][w.eval]["answer_sets"]
        return sorted({self.answers_dir(w.subject, self.group_of[a]) for a in sets})

    def data(self, w) -> list[str]:
        return [self.answer_set_split(a) for a in self.config["evals"][w.eval]["answer_sets"]]

    def tasks(self, w) -> str:
        return js([{"name": a, "data": self.answer_set_split(a), "answers": self.answers_file(w.subject, a),
                    "settings": {k: v for k, v in self.config["answer_sets"][a].items() if k != "threads"}}
                   for a in self.config["evals"][w.eval]["answer_sets"]])


class Head2Head(Instances):
    """A judge compares an instance's answers with a reference's (AlpacaEval, pairwise)."""

    def __init__(self, config: dict, basedir: str):
        super().__init__(config, basedir)
        self.judge = ModelOf(self.judge_ref, option="--judge-model", revision_option="--judge-revision")

    def judged(self, model_judge: bool) -> str:
        """A wildcard pattern matching the judged evals whose judge is a model run here (`local`: a GPU job),
        or the others (answer_check, an API annotator: a CPU job)."""
        return pattern(name for name, e in self.config["evals"].items()
                       if e["kind"] in ("alpaca_eval", "pairwise") and runs_model_here(e["judge"]) == model_judge)

    def judge_ref(self, w) -> ModelRef:
        judge = self.config["evals"][w.eval]["judge"]
        return self.model_ref(judge["model"]) if runs_model_here(judge) else NO_MODEL

    def reference(self, w) -> tuple[str, str | None]:
        """(name, answer file or None) of the reference an instance is judged against: for pairwise its
        starting model; for alpaca_eval the configured model / run (its first seed) or the split's `chosen`."""
        answer_set = self.config["evals"][w.eval]["answer_set"]
        subject = head2head_reference(self.config, w.subject, w.eval)
        if subject is None:
            return f"{answer_set} references (the split's chosen responses)", None
        return subject, self.answers_file(subject, answer_set)

    def inputs(self, w) -> dict:
        e = self.config["evals"][w.eval]
        inputs = {"script": code("head2head"), "data": self.answer_set_split(e["answer_set"]),
                  "answers": self.answers_dir(w.subject, self.group_of[e["answer_set"]])}
        reference = self.reference(w)[1]
        if reference:
            inputs["reference"] = os.path.dirname(reference)
        inputs["judge"] = self.judge.files(w)
        if e["judge"]["kind"] == "fastchat":
            inputs["judge_prompts"] = os.path.join(self.basedir, "workflow_scripts/fastchat_judge_prompts.jsonl")
        return inputs

    def spec(self, w) -> str:
        return js({k: v for k, v in self.config["evals"][w.eval].items() if k != "threads"})

    def answers(self, w) -> str:
        return self.answers_file(w.subject, self.config["evals"][w.eval]["answer_set"])

    def reference_arg(self, w) -> str:
        answers = self.reference(w)[1]
        return f"--reference-answers {answers}" if answers else ""

    def reference_name(self, w) -> str:
        return self.reference(w)[0]

    def engine(self, w) -> dict:
        """The engine settings of the judge model (backend hf when the judge runs no model here)."""
        judge = self.config["evals"][w.eval]["judge"]
        return judge if runs_model_here(judge) else {"backend": "hf"}

    def python(self, w) -> str:
        return python(self.engine(w))

    def env(self, w) -> str:
        return engine_env(self.engine(w), "../envs/eval.yaml")
