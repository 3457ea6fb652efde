# Reference log-prob cache, one per (reference model, data, length settings).


rule refcache:
    input:
        script=code("refcache"),
        launch=code("launch"),
        data=P.refcache.data,
        model=P.refcache.model.files,
    output:
        tensors=f"{R}/refcache/{{cache}}.safetensors",
        meta=f"{R}/refcache/{{cache}}.json",
    params:
        spec=P.refcache.spec,
        model=P.refcache.model.args,
    wildcard_constraints:
        cache=P.refcache.names(),
    threads: config["refcache"]["threads"]
    resources:
        gpu=config["refcache"]["processes"],  # a resource, not a param: the cache's bytes do not depend on it
    log:
        f"{R}/logs/refcache/{{cache}}.log",
    benchmark:
        f"{R}/benchmarks/refcache/{{cache}}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "python -m workflow_scripts.launch --processes {resources.gpu} workflow_scripts.refcache --params {params.spec:q} {params.model} --data {input.data} "
        "--output {output.tensors} --threads {threads} > {log} 2>&1"
