# Training: one job per (run, seed), every method through the one trainer.


rule train:
    input:
        unpack(train_inputs),
        launch=code("launch"),
    output:
        model=directory(f"{R}/train/{{run}}/seed{{seed}}/model"),
        log=f"{R}/train/{{run}}/seed{{seed}}/train_log.jsonl",
        run=f"{R}/train/{{run}}/seed{{seed}}/run.json",
    params:
        hp=lambda w: js(run_hyperparameters(config["runs"][w.run], int(w.seed))),
        model=lambda w: run_model(w.run, w.seed)[0],
        revision=lambda w: revision_arg(run_model(w.run, w.seed)[1]),
        flags=lambda w: model_flags(config["runs"][w.run]["model"], config["runs"][w.run]["ref"]),
        reference=reference_args,
        outdir=lambda w: f"{R}/train/{w.run}/seed{w.seed}",
        launch=train_launch_args,
    threads: lambda w: config["runs"][w.run]["threads"]
    resources:
        gpu=lambda w: config["runs"][w.run]["processes"],  # one process per GPU on the cluster
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
        "trap '' TERM; python -m workflow_scripts.launch {params.launch} workflow_scripts.train --params {params.hp:q} --run {wildcards.run} --model {params.model} {params.revision} "
        "{params.flags} --data {input.data} {params.reference} --outdir {params.outdir} "
        "--report-to {resources.report_to} --project {resources.tracking_project} --threads {threads} > {log} 2>&1"
