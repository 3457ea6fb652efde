# Training: one job per (run, seed), every method through the one trainer.


rule train:
    input:
        unpack(P.train.inputs),
        launch=code("launch"),
    output:
        model=directory(f"{R}/train/{{run}}/seed{{seed}}/model"),
        log=f"{R}/train/{{run}}/seed{{seed}}/train_log.jsonl",
        run=f"{R}/train/{{run}}/seed{{seed}}/run.json",
    params:
        hp=P.train.spec,
        model=P.train.model.args,
        reference=P.train.reference,
        outdir=P.train.outdir,
        launch=P.train.launch,
    threads: lookup(dpath="runs/{run}/threads", within=config)
    resources:
        gpu=lookup(dpath="runs/{run}/processes", within=config),  # one process per GPU on the cluster
        # tracking is a resource, not a param: turning it on or off never reruns a training
        report_to=",".join(config["tracking"]["report_to"]) or "none",
        tracking_project=config["tracking"]["project"],
    log:
        f"{R}/logs/train/{{run}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{run}}/seed{{seed}}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        # the shell ignores SIGTERM, which SLURM sends every process of the step at a preemption or scancel, and
        # waits for the trainer processes to checkpoint on it (accelerate's launcher forwards it to them too)
        "trap '' TERM; python -m workflow_scripts.launch {params.launch} workflow_scripts.train --params {params.hp:q} --run {wildcards.run} {params.model} "
        "--data {input.data} {params.reference} --outdir {params.outdir} "
        "--report-to {resources.report_to} --project {resources.tracking_project} --threads {threads} > {log} 2>&1"
