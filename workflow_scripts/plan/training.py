"""The plan of the runs: the data and model each (run, seed) starts from (the SPIN chain: iteration k starts
from iteration k-1 of the same seed and trains on its own generations), the reference log-prob caches the
runs share, and the training jobs."""
from __future__ import annotations

import hashlib
import os
from dataclasses import replace

from ..methods import METHODS, negatives_required, refcache_settings, run_hyperparameters
from .base import ModelOf, ModelRef, R, Section, code, engine_params, js, pattern, python, split_file


class Runs(Section):
    """What the sections about runs share: each (run, seed)'s data, starting model, reference and cache."""

    def run_data(self, run: str, seed) -> str:
        """Training data of one (run, seed): SPIN iterations train on their own generations."""
        if self.config["runs"][run].get("spin"):
            return f"{R}/spin/{run}/seed{seed}.jsonl"
        return self.data_file(self.config["runs"][run]["data"])

    def run_start(self, run: str, seed, *also_loaded: str | None) -> ModelRef:
        """The model a run starts from: SPIN iteration k > 1 starts from iteration k-1 of the same seed."""
        r = self.config["runs"][run]
        previous = (r.get("spin") or {}).get("previous")
        if previous:
            path = f"{R}/train/{previous}/seed{seed}/model"
            return ModelRef(path, None, [path], self.model_flags(r["model"], *also_loaded))
        return self.model_ref(r["model"], *also_loaded)

    def run_reference(self, run: str, seed) -> ModelRef:
        """The run's reference model (SPIN: the model it starts from), with the flags of a job loading both."""
        r = self.config["runs"][run]
        if r.get("spin"):
            return self.run_start(run, seed, r["ref"])
        return replace(self.model_ref(r["ref"] or r["model"]), flags=self.model_flags(r["model"], r["ref"]))

    def refcache_name(self, run: str) -> str:
        """Readable (reference, data, lengths, kind) plus a digest of every encoding setting and the dtype,
        so runs share a cache exactly when it is valid for all of them."""
        r, spec = self.config["runs"][run], METHODS[self.config["runs"][run]["method"]]
        flags = ("-tok" if spec.token_ref else "") + ("-kl" if spec.kl_pairs else "")
        digest = hashlib.sha256(js({**refcache_settings(r), "dtype": r["dtype"]}).encode()).hexdigest()[:8]
        return f"{r['ref'] or r['model']}--{r['data']}--{r['max_length']}-{r['max_prompt_length']}{flags}-{digest}"

    def uses_refcache(self, run: str) -> bool:
        """A QLoRA run's reference is its own 4-bit base with adapters disabled: computed live."""
        r = self.config["runs"][run]
        qlora = bool((r["lora"] or {}).get("load_in_4bit"))
        return METHODS[r["method"]].needs_ref and r["ref_logps"] == "cache" and not qlora


class Spin(Runs):
    """A SPIN iteration's rejected responses: one sample per prompt by its starting model, seeded by the
    training seed, then joined with the ground truth like any generation."""

    def __init__(self, config: dict, basedir: str):
        super().__init__(config, basedir)
        self.model = ModelOf(lambda w: self.run_start(w.run, w.seed))

    def data(self, w) -> str:
        return split_file(self.config["runs"][w.run]["data"], "train")

    def spec(self, w) -> str:
        return engine_params(self.config["runs"][w.run]["generation"])

    def python(self, w) -> str:
        return python(self.config["runs"][w.run]["generation"])


class RefCache(Runs):
    """Reference log-prob caches, one per (reference model, data, encoding settings), read by their runs."""

    def __init__(self, config: dict, basedir: str):
        super().__init__(config, basedir)
        self.runs: dict[str, list[str]] = {}  # cache name -> the runs that read it
        for run in config["runs"]:
            if self.uses_refcache(run):
                self.runs.setdefault(self.refcache_name(run), []).append(run)
        self.model = ModelOf(lambda w: self.run_reference(self.runs[w.cache][0], None))

    def names(self) -> str:
        return pattern(self.runs)

    def data(self, w) -> str:
        return self.data_file(self.config["runs"][self.runs[w.cache][0]]["data"])

    def spec(self, w) -> str:
        """Settings of a cache (shared by its runs) and the negatives it must hold: the most any of them reads."""
        runs = [self.config["runs"][r] for r in self.runs[w.cache]]
        negatives = max(negatives_required(r["method"], r) for r in runs)
        refcache = self.config["refcache"]
        return js({**refcache_settings(runs[0]), "dtype": runs[0]["dtype"], "negatives": negatives,
                   "attn_implementation": runs[0]["attn_implementation"], "batch_size": refcache["batch_size"],
                   "shard_size": refcache["shard_size"]})


class Train(Runs):
    """One training job per (run, seed), every method through the one trainer."""

    def __init__(self, config: dict, basedir: str):
        super().__init__(config, basedir)
        self.model = ModelOf(lambda w: self.run_start(w.run, w.seed, self.config["runs"][w.run]["ref"]))

    def inputs(self, w) -> dict:
        r = self.config["runs"][w.run]
        inputs = {"script": code("train"), "data": self.run_data(w.run, w.seed),
                  "model": self.run_start(w.run, w.seed).inputs}
        if r["deepspeed"]:  # its ZeRO stage, offload and precision settings shape the training
            inputs["deepspeed"] = os.path.join(self.basedir, "accelerate", f"{r['deepspeed']}.yaml")
        if METHODS[r["method"]].needs_ref:
            inputs["ref_model"] = self.run_reference(w.run, w.seed).inputs
            if self.uses_refcache(w.run):  # the tensors and the record of their ids and digests, which training reads
                cache = f"{R}/refcache/{self.refcache_name(w.run)}"
                inputs.update(refcache=f"{cache}.safetensors", refcache_meta=f"{cache}.json")
        return inputs

    def spec(self, w) -> str:
        return js(run_hyperparameters(self.config["runs"][w.run], int(w.seed)))

    def reference(self, w, input) -> str:
        """The reference's arguments: its model, and the cache when the run reads one."""
        if not METHODS[self.config["runs"][w.run]["method"]].needs_ref:
            return ""
        args = self.run_reference(w.run, w.seed).args("--ref-model", "--ref-revision", flags=False)
        return args + (f" --refcache {input.refcache}" if self.uses_refcache(w.run) else "")

    def launch(self, w) -> str:
        """Process count (per node), node count and DeepSpeed config name of a run, for workflow_scripts.launch."""
        r = self.config["runs"][w.run]
        return " ".join(filter(None, [f"--processes {r['processes']}", r["nodes"] > 1 and f"--nodes {r['nodes']}",
                                      r["deepspeed"] and f"--deepspeed {r['deepspeed']}"]))

    def srun(self, w) -> str:
        """A multi-node run's launchers, one per node of its SLURM job (nothing for one node)."""
        nodes = self.config["runs"][w.run]["nodes"]
        if nodes == 1:
            return ""
        return (f'srun --jobid="${{SLURM_JOB_ID:?a run of {nodes} nodes runs in a SLURM job: --profile slurm}}" '
                f"--nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1")

    def gpus(self, w) -> int:
        """The GPUs of a run's job: its processes on each of its nodes."""
        r = self.config["runs"][w.run]
        return r["processes"] * r["nodes"]

    def runs(self, multi_node: bool) -> str:
        """A wildcard pattern matching the runs on one node (rule train), or those on several (train_multinode)."""
        return pattern(name for name, r in self.config["runs"].items() if (r["nodes"] > 1) == multi_node)

    def outdir(self, w) -> str:
        return f"{R}/train/{w.run}/seed{w.seed}"
