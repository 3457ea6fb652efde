# Reference log-prob cache, one per (reference model, data, length settings).


rule refcache:
    input:
        script=code("refcache"),
        data=lambda w: data_file(config["runs"][REFCACHES[w.cache][0]]["data"]),
        model=lambda w: run_ref(REFCACHES[w.cache][0], None)[2],
    output:
        tensors=f"{R}/refcache/{{cache}}.safetensors",
        meta=f"{R}/refcache/{{cache}}.json",
    params:
        spec=lambda w: refcache_params(w.cache),
        model=lambda w: run_ref(REFCACHES[w.cache][0], None)[0],
        revision=lambda w: revision_arg(run_ref(REFCACHES[w.cache][0], None)[1]),
        flags=lambda w: model_flags(config["runs"][REFCACHES[w.cache][0]]["model"], config["runs"][REFCACHES[w.cache][0]]["ref"]),
    wildcard_constraints:
        cache="|".join(REFCACHES) or "(?!)",
    threads: config["refcache"]["threads"]
    log:
        f"{R}/logs/refcache/{{cache}}.log",
    benchmark:
        f"{R}/benchmarks/refcache/{{cache}}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "python -m workflow_scripts.refcache --params {params.spec:q} --model {params.model} {params.revision} {params.flags} --data {input.data} "
        "--output {output.tensors} --threads {threads} > {log} 2>&1"
