# Data stage: normalise each dataset split to the record schema of DESIGN.md.


def data_source(w):
    d = config["datasets"][w.dataset]
    if d.get("build") == "synthetic":
        return f"{R}/raw/{w.dataset}"
    if d.get("path"):
        return d["path"][w.split]
    return []


def data_source_arg(w, input):
    d = config["datasets"][w.dataset]
    if d.get("build") == "synthetic":
        return f"--source {input.source}/{w.split}.jsonl"
    if d.get("path"):
        return f"--source {input.source}"
    return ""


rule data:
    input:
        script=script("data"),
        source=data_source,
    output:
        f"{R}/data/{{dataset}}/{{split}}.jsonl",
    params:
        spec=lambda w: js(config["datasets"][w.dataset]),
        source=data_source_arg,
    log:
        f"{R}/logs/data/{{dataset}}/{{split}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "{PY}.data --params {params.spec:q} --dataset {wildcards.dataset} --split {wildcards.split} "
        "{params.source} --output {output} > {log} 2>&1"
