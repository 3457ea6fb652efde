# Models and data the workflow makes itself: the embedded default's tiny tokenizer + Llama and synthetic
# dataset, and GGUF checkpoints de-quantised into transformers folders.


rule build_tiny_model:
    """Train the tokenizer and pre-train a small Llama on the synthetic corpus."""
    input:
        script=code("tiny_world"),
    output:
        directory(f"{R}/models/{{model}}"),
    wildcard_constraints:
        model=P.world.models_made("build"),
    params:
        spec=P.world.model_spec,
    threads: lookup(dpath="models/{model}/threads", within=config)
    log:
        f"{R}/logs/build_tiny_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/build_tiny_model/{{model}}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "python -m workflow_scripts.tiny_world --params {params.spec:q} --outdir {output} --threads {threads} > {log} 2>&1"


rule build_synthetic_dataset:
    """Synthetic arithmetic word problems in raw form, in the columns of the configured dataset format."""
    input:
        script=code("synthetic"),
    output:
        directory(f"{R}/raw/{{dataset}}"),
    params:
        spec=P.world.synthetic_spec,
    log:
        f"{R}/logs/build_synthetic_dataset/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.synthetic --params {params.spec:q} --outdir {output} > {log} 2>&1"


rule convert_gguf:
    """De-quantise a GGUF checkpoint (a local file or one an installed package ships) into a transformers folder."""
    input:
        script=code("gguf_model"),
        source=P.world.gguf_source,
    output:
        directory(f"{R}/models/{{model}}"),
    wildcard_constraints:
        model=P.world.models_made("gguf"),
    params:
        spec=P.world.gguf_spec,
    threads: lookup(dpath="models/{model}/threads", within=config)
    log:
        f"{R}/logs/convert_gguf/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/convert_gguf/{{model}}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "python -m workflow_scripts.gguf_model --params {params.spec:q} --model {wildcards.model} --outdir {output} "
        "> {log} 2>&1"
