"""The plan of what the workflow delivers: the tables (with the eval files behind each cell), the training-curve
plots and model cards of every trained instance, the pushes to the hub, and the provenance manifest."""
from __future__ import annotations

from .base import R, Section, js, json_file
from .instances import evaluated, subjects


class Outputs(Section):
    """The tables, plots, model cards, pushes and manifest (rules/tables.smk, report.smk, cards.smk)."""

    def eval_files(self, table: str) -> dict:
        """Row -> eval -> the eval JSON of each of its instances (training seeds)."""
        t = self.config["tables"][table]
        evals = dict.fromkeys(col["eval"] or t["eval"] for col in t["columns"])
        return {row: {ev: [f"{R}/eval/{s}/{ev}.json" for s in subjects(self.config, row)] for ev in evals}
                for row in t["rows"]}

    def table_evals(self, w) -> list[str]:
        return [f for evals in self.eval_files(w.table).values() for files in evals.values() for f in files]

    def table_files(self, w) -> str:
        return json_file(self.eval_files(w.table))

    def table_spec(self, w) -> str:
        return js({**self.config["tables"][w.table], "name": w.table})

    def tables(self) -> list[str]:
        return [f"{R}/tables/{t}.{ext}" for t in self.config["tables"] for ext in ("tex", "csv", "md")]

    def trained(self) -> list[str]:
        """Every trained instance (`run/seedS`; every SPIN iteration is a run)."""
        return [s for run in self.config["runs"] for s in subjects(self.config, run)]

    def plots(self) -> list[str]:
        """The training-curve plot of every trained instance (rules/report.smk)."""
        return [f"{R}/plots/{s}.png" for s in self.trained()]

    def cards(self) -> list[str]:
        """The model card of every trained instance (rules/cards.smk)."""
        return [f"{R}/train/{s}/model_card.md" for s in self.trained()]

    def card_evals(self, w) -> list[str]:
        """The eval files of the evaluations the tables ask of a trained instance."""
        subject = f"{w.run}/seed{w.seed}"
        return [f"{R}/eval/{subject}/{e}.json" for s, e in evaluated(self.config) if s == subject]

    def curve_group(self, w) -> str:
        """The report's subcategory of a training curve: SPIN iterations sit under their SPIN run."""
        return (self.config["runs"][w.run].get("spin") or {}).get("run", w.run)

    def curve_labels(self, w) -> dict:
        return {"run": w.run, "method": self.config["runs"][w.run]["method"], "seed": w.seed}

    def push_repo(self, w) -> str:
        """The hub repo a trained instance is pushed to (config `push.repo`, with {run} and {seed})."""
        if not self.config["push"]["repo"]:
            raise ValueError("config push.repo is not set: name the hub repo of a pushed model, e.g. "
                             "'my-org/{run}-seed{seed}'")
        return self.config["push"]["repo"].format(run=w.run, seed=w.seed)

    def manifest_config(self, w) -> str:
        return json_file(self.config)
