# Seeded negative generation (one job per seed) and the merge into the 1-to-m file.


rule generate:
    input:
        script=code("generate"),
        data=P.generation.data,
        model=P.generation.model.files,
    output:
        f"{R}/generate/{{generation}}/seed{{seed}}.jsonl",
    params:
        python=P.generation.python,
        spec=P.generation.spec,
        model=P.generation.model.args,
    threads: lookup(dpath="generations/{generation}/threads", within=config)
    log:
        f"{R}/logs/generate/{{generation}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/generate/{{generation}}/seed{{seed}}.tsv"
    conda:
        "../envs/generate.yaml"
    shell:
        "{params.python} -m workflow_scripts.generate --params {params.spec:q} --data {input.data} {params.model} "
        "--seed {wildcards.seed} --output {output} --threads {threads} > {log} 2>&1"


rule merge:
    input:
        script=code("merge"),
        data=P.generation.data,
        seeds=P.generation.seed_files,
    output:
        f"{R}/merge/{{generation}}.jsonl",
    params:
        limit=P.generation.limit,
    log:
        f"{R}/logs/merge/{{generation}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.merge --data {input.data} --seed-files {input.seeds} {params.limit} --output {output} > {log} 2>&1"
