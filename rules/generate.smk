# Seeded negative generation (one job per seed) and the merge into the 1-to-m file.


rule generate:
    input:
        script=code("generate"),
        data=lambda w: split_file(config["generations"][w.generation]["dataset"], config["generations"][w.generation]["split"]),
        model=lambda w: model_location(config["generations"][w.generation]["model"])[2],
    output:
        f"{R}/generate/{{generation}}/seed{{seed}}.jsonl",
    params:
        python=lambda w: generate_python(config["generations"][w.generation]),
        spec=generation_params,
        model=lambda w: model_location(config["generations"][w.generation]["model"])[0],
        revision=lambda w: revision_arg(model_location(config["generations"][w.generation]["model"])[1]),
        flags=lambda w: model_flags(config["generations"][w.generation]["model"]),
    threads: lambda w: config["generations"][w.generation]["threads"]
    log:
        f"{R}/logs/generate/{{generation}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/generate/{{generation}}/seed{{seed}}.tsv"
    conda:
        "../envs/generate.yaml"
    shell:
        "{params.python} -m workflow_scripts.generate --params {params.spec:q} --data {input.data} --model {params.model} {params.revision} "
        "{params.flags} --seed {wildcards.seed} --output {output} --threads {threads} > {log} 2>&1"


rule merge:
    input:
        script=code("merge"),
        data=lambda w: split_file(config["generations"][w.generation]["dataset"], config["generations"][w.generation]["split"]),
        seeds=lambda w: [f"{R}/generate/{w.generation}/seed{s}.jsonl"
                         for s in config["generations"][w.generation]["seeds"]],
    output:
        f"{R}/merge/{{generation}}.jsonl",
    params:
        limit=lambda w: (f"--limit {config['generations'][w.generation]['limit']}"
                         if config["generations"][w.generation]["limit"] else ""),
    log:
        f"{R}/logs/merge/{{generation}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.merge --data {input.data} --seed-files {input.seeds} {params.limit} --output {output} > {log} 2>&1"
