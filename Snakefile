"""Post-training methods compared end to end: raw data -> negatives -> reference cache ->
training -> evaluation -> tables. See README.md."""

from snakemake.utils import min_version

min_version("9.0")

if not workflow.overwrite_configfiles:  # a --configfile replaces the default, never merges into it
    configfile: "config.yaml"


include: "rules/common.smk"


report: "report/workflow.rst"


envvars:
    *[name for name in SECRET_ENV if name in os.environ],

include: "rules/world.smk"
include: "rules/data.smk"
include: "rules/generate.smk"
include: "rules/spin.smk"
include: "rules/pairs.smk"
include: "rules/refcache.smk"
include: "rules/train.smk"
include: "rules/eval.smk"
include: "rules/tables.smk"
include: "rules/report.smk"
include: "rules/cards.smk"


localrules:
    all,
    build_synthetic_dataset,
    merge,
    step_controlled_pairs,
    unpair,
    lm_eval_tasks,
    nltk_data,
    table,
    manifest,


rule all:
    input:
        P.outputs.tables(),
        P.outputs.plots(),
        P.outputs.cards(),
        f"{R}/manifest.json",
    default_target: True
