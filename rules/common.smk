# The config's start-up checks, the plan (workflow_scripts/plan: every rule's inputs and params) and the
# wildcard constraints. No rules here.
import os
import re
import signal
import sys

sys.path.insert(0, workflow.basedir)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])))

from snakemake.exceptions import WorkflowError
from workflow_scripts.config import ConfigError, check_config, check_yaml_file
from workflow_scripts.plan import R, Plan, code

try:
    for path in workflow.configfiles:
        check_yaml_file(path)
    check_config(config, os.path.join(workflow.basedir, "schemas/config.schema.yaml"))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

# SLURM signals every process of a job step (the profile's --signal=USR1@600 before the time limit): the
# snakemake running the job, the job's shell and accelerate's launcher ignore USR1 (an ignored signal stays
# ignored in every child), so that they outlive the trainer processes, which handle it (checkpoint, exit 143).
signal.signal(signal.SIGUSR1, signal.SIG_IGN)

P = Plan(config, workflow.basedir)
# Credentials (hub downloads of gated models, API judges, wandb) come only from the environment: the
# ones that are set are declared with `envvars` (passed to cluster jobs), never put in params or files.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY")


wildcard_constraints:
    model=r"[A-Za-z0-9_]+",
    dataset=r"[A-Za-z0-9_]+",
    split=r"[A-Za-z0-9_]+",
    generation=r"[A-Za-z0-9_]+",
    pairs=r"[A-Za-z0-9_]+",
    run=r"[A-Za-z0-9_]+",
    seed=r"\d+",
    eval=r"[A-Za-z0-9_]+",
    table=r"[A-Za-z0-9_]+",
    subject=r"[A-Za-z0-9_]+/(seed\d+|base)",
    answer_group="|".join(map(re.escape, P.answers.groups)) or "(?!)",
