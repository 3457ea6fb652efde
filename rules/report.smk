# Report (`snakemake --report report.html`): the tables (marked in tables.smk) and one plot of
# training curves per trained instance, i.e. per subject of a run (every SPIN iteration is a run);
# `rule all` and the manifest ask for all of them. In the report, SPIN iterations sit under their SPIN run.


localrules:
    curves,


rule curves:
    input:
        script=code("curves"),
        train_log=f"{R}/train/{{run}}/seed{{seed}}/train_log.jsonl",
    output:
        report(f"{R}/plots/{{run}}/seed{{seed}}.png", caption="../report/curves.rst", category="Training curves",
               subcategory=P.outputs.curve_group,
               labels=P.outputs.curve_labels),
    params:
        method=lookup(dpath="runs/{run}/method", within=config),
    priority: 1  # plotted as soon as its training is done
    log:
        f"{R}/logs/curves/{{run}}/seed{{seed}}.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m workflow_scripts.curves --log {input.train_log} --run {wildcards.run} --method {params.method} "
        "--seed {wildcards.seed} --output {output} > {log} 2>&1"
