"""The plan of the models and data the workflow makes or reads first: the tiny world's model and synthetic
dataset, de-quantised GGUF checkpoints, and the data stage's normalised splits."""
from __future__ import annotations

from .base import R, Section, js, pattern


class World(Section):
    """The tiny world's model and dataset, GGUF conversions, and the data stage (rules/world.smk, data.smk)."""

    def models_made(self, kind: str) -> str:
        """A wildcard pattern matching exactly the models the workflow makes one way (`build` or `gguf`)."""
        models = self.config["models"]
        return pattern(n for n, m in models.items() if (m.get("build") == "tiny" if kind == "build" else kind in m))

    def model_spec(self, w) -> str:
        return js(self.config["models"][w.model])

    def gguf_source(self, w) -> list[str]:
        """The local .gguf file a conversion reads (none when it comes from an installed package)."""
        spec = self.config["models"][w.model]["gguf"]
        return [] if spec["package"] else [spec["file"]]

    def gguf_spec(self, w) -> str:
        return js(self.config["models"][w.model]["gguf"])

    def synthetic_spec(self, w) -> str:
        return js({k: self.config["datasets"][w.dataset][k] for k in ("seed", "max_operand", "splits", "format")})

    def dataset_spec(self, w) -> str:
        return js(self.config["datasets"][w.dataset])

    def data_source(self, w):
        """What the data stage reads: the synthetic raw folder, a local file, or nothing (a hub dataset)."""
        d = self.config["datasets"][w.dataset]
        if d.get("build") == "synthetic":
            return f"{R}/raw/{w.dataset}"
        if d.get("path"):
            return d["path"][w.split]
        return []

    def data_source_arg(self, w, input) -> str:
        d = self.config["datasets"][w.dataset]
        if d.get("build") == "synthetic":
            return f"--source {input.source}/{w.split}.jsonl"
        if d.get("path"):
            return f"--source {input.source}"
        return ""
