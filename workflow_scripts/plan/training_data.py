"""The plan of the training data made from data and models: seeded negatives (one job per seed) and their
merge, step-controlled pairs, bridged pairs and unpaired (labelled) data."""
from __future__ import annotations

from .base import NO_MODEL, ModelOf, R, Section, engine_params, js, python, split_file


class Seeded(Section):
    """A model answering a split's prompts, one job per seed (negatives, step-controlled pairs)."""
    section = folder = wildcard = ""

    def __init__(self, config: dict, basedir: str):
        super().__init__(config, basedir)
        self.model = ModelOf(lambda w: self.model_ref(self.entry(w)["model"]))

    def entry(self, w) -> dict:
        return self.config[self.section][getattr(w, self.wildcard)]

    def data(self, w) -> str:
        return split_file(self.entry(w)["dataset"], self.entry(w)["split"])

    def spec(self, w) -> str:
        return engine_params(self.entry(w), ("seeds", "model", "dataset"))

    def python(self, w) -> str:
        return python(self.entry(w))

    def seed_files(self, w) -> list[str]:
        return [f"{R}/{self.folder}/{getattr(w, self.wildcard)}/seed{s}.jsonl" for s in self.entry(w)["seeds"]]


class Generation(Seeded):
    """Seeded negative generation (rule generate) and the merge into the 1-to-m file."""
    section, folder, wildcard = "generations", "generate", "generation"

    def limit(self, w) -> str:
        return f"--limit {self.entry(w)['limit']}" if self.entry(w)["limit"] else ""


class StepControlled(Seeded):
    """Step-controlled pairs (SCDPO): one generating job per seed, then joined."""
    section, folder, wildcard = "step_controlled", "step_controlled", "pairs"


class Bridge(Section):
    """Bridged pairs (DPO-BMC): an editor model, or the synthetic task's minimal repair (no model)."""

    def __init__(self, config: dict, basedir: str):
        super().__init__(config, basedir)
        self.editor = ModelOf(self.editor_ref, option="--editor")

    def entry(self, w) -> dict:
        return self.config["bridges"][w.pairs]

    def editor_ref(self, w):
        editor = self.entry(w)["editor"]
        return self.model_ref(editor) if editor in self.config["models"] else NO_MODEL

    def source(self, w) -> str:
        return self.data_file(self.entry(w)["source"])

    def spec(self, w) -> str:
        return engine_params(self.entry(w), ("source",))

    def python(self, w) -> str:
        return python(self.entry(w))


class Unpaired(Section):
    """KTO's unpaired data: a generation's samples labelled by the answer checker."""

    def source(self, w) -> str:
        return self.data_file(self.config["unpaired"][w.pairs]["source"])

    def spec(self, w) -> str:
        return js(self.config["unpaired"][w.pairs])
