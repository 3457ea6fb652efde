# Training: one job per (run, seed), every method through the one trainer; a run of several nodes is one
# SLURM job of that many nodes (train_multinode), a launcher on each.


rule train:
    wildcard_constraints:
        run=P.train.runs(multi_node=False),
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
        srun=P.train.srun,
    threads: lookup(dpath="runs/{run}/threads", within=config)
    resources:
        gpu=P.train.gpus,  # one process per GPU on the cluster
        nodes=lookup(dpath="runs/{run}/nodes", within=config),
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
        "trap '' TERM; {params.srun} python -m workflow_scripts.launch {params.launch} workflow_scripts.train --params {params.hp:q} --run {wildcards.run} {params.model} "
        "--data {input.data} {params.reference} --outdir {params.outdir} "
        "--report-to {resources.report_to} --project {resources.tracking_project} --threads {threads} > {log} 2>&1"


# The jobstep executor runs an `mpi` job's command as it is (no srun of its own), so that the command's srun
# starts one launcher on each node of the job (P.train.srun); `tasks`: one per node; no tasks per GPU.
use rule train as train_multinode with:
    wildcard_constraints:
        run=P.train.runs(multi_node=True),
    resources:
        gpu=P.train.gpus,
        nodes=lookup(dpath="runs/{run}/nodes", within=config),
        tasks=lookup(dpath="runs/{run}/nodes", within=config),
        tasks_per_gpu=0,
        mpi="srun",
        report_to=",".join(config["tracking"]["report_to"]) or "none",
        tracking_project=config["tracking"]["project"],
