"""The workflow's plan, torch-free and without Snakemake: every path, model reference, evaluated instance,
reference-cache name, the SPIN chain, and each stage's inputs and params, as functions of the resolved
config and a job's wildcards. The rules (rules/*.smk) only name them; tests import them. No stage imports
the plan: it decides which jobs run, never what a job computes.

One section per group of rules (`Plan.generation` for rules generate and merge, ...); a section's
`model` is the model its jobs load (`ModelOf`: the files to wait for, the arguments, the location).
"""
from __future__ import annotations

from .base import R, code
from .evaluation import AnswerGroups, Head2Head, LmEval, MathEval
from .instances import answer_groups, answer_set_needs, evaluated, group_of, subjects
from .outputs import Outputs
from .training import RefCache, Spin, Train
from .training_data import Bridge, Generation, StepControlled, Unpaired
from .world import World

__all__ = ["R", "Plan", "answer_groups", "answer_set_needs", "code", "evaluated", "group_of", "subjects"]


class Plan:
    """The sections of the plan of one resolved config; `basedir` is the workflow's folder."""

    def __init__(self, config: dict, basedir: str):
        self.world = World(config, basedir)
        self.generation = Generation(config, basedir)
        self.step_controlled = StepControlled(config, basedir)
        self.bridge = Bridge(config, basedir)
        self.unpaired = Unpaired(config, basedir)
        self.spin = Spin(config, basedir)
        self.refcache = RefCache(config, basedir)
        self.train = Train(config, basedir)
        self.lm_eval = LmEval(config, basedir)
        self.answers = AnswerGroups(config, basedir)
        self.math = MathEval(config, basedir)
        self.head2head = Head2Head(config, basedir)
        self.outputs = Outputs(config, basedir)
