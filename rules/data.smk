# Data stage: normalise each dataset split to the record schema (README's Artifacts; workflow_scripts/data.py).


rule data:
    input:
        script=code("data"),
        source=P.world.data_source,
    output:
        f"{R}/data/{{dataset}}/{{split}}.jsonl",
    params:
        spec=P.world.dataset_spec,
        source=P.world.data_source_arg,
    log:
        f"{R}/logs/data/{{dataset}}/{{split}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.data --params {params.spec:q} --dataset {wildcards.dataset} --split {wildcards.split} "
        "{params.source} --output {output} > {log} 2>&1"
