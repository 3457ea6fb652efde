# Training: one job per (run, seed), every method through the one trainer.


def train_inputs(w):
    run = config["runs"][w.run]
    inputs = {"script": script("train"), "data": data_file(run["data"]), "model": model_location(run["model"])[2]}
    if NEEDS_REF[run["method"]]:
        inputs["ref_model"] = model_location(run_ref(w.run))[2]
        if uses_refcache(w.run):
            inputs["refcache"] = f"{R}/refcache/{refcache_name(w.run)}.safetensors"
    return inputs


def reference_args(w, input):
    run = config["runs"][w.run]
    if not NEEDS_REF[run["method"]]:
        return ""
    path, revision, _ = model_location(run_ref(w.run))
    args = f"--ref-model {path}" + (f" --ref-revision {revision}" if revision else "")
    if uses_refcache(w.run):
        args += f" --refcache {input.refcache}"
    return args


rule train:
    input:
        unpack(train_inputs),
    output:
        model=directory(f"{R}/train/{{run}}/seed{{seed}}/model"),
        log=f"{R}/train/{{run}}/seed{{seed}}/train_log.jsonl",
        run=f"{R}/train/{{run}}/seed{{seed}}/run.json",
    params:
        hp=lambda w: js(run_hyperparameters(config["runs"][w.run], int(w.seed))),
        model=lambda w: model_location(config["runs"][w.run]["model"])[0],
        revision=lambda w: revision_arg(model_location(config["runs"][w.run]["model"])[1]),
        reference=reference_args,
    threads: lambda w: config["runs"][w.run]["threads"]
    log:
        f"{R}/logs/train/{{run}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{run}}/seed{{seed}}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "{PY}.train --params {params.hp:q} --run {wildcards.run} --model {params.model} {params.revision} "
        "--data {input.data} {params.reference} --outdir {R}/train/{wildcards.run}/seed{wildcards.seed} "
        "--threads {threads} > {log} 2>&1"
