# The embedded default's own world: a tiny tokenizer + Llama and a synthetic dataset.


rule build_tiny_model:
    """Train the tokenizer and pre-train a small Llama on the synthetic corpus."""
    input:
        script=code("tiny_world"),
    output:
        directory(f"{R}/models/{{model}}"),
    params:
        spec=lambda w: js(config["models"][w.model]),
    threads: lambda w: config["models"][w.model]["threads"]
    log:
        f"{R}/logs/build_tiny_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/build_tiny_model/{{model}}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "python -m workflow_scripts.tiny_world --params {params.spec:q} --outdir {output} --threads {threads} > {log} 2>&1"


rule build_synthetic_dataset:
    """Synthetic GSM8K-style problems in raw form (question, answer ending in '#### N')."""
    input:
        script=code("synthetic"),
    output:
        directory(f"{R}/raw/{{dataset}}"),
    params:
        spec=lambda w: js({k: config["datasets"][w.dataset][k] for k in ("seed", "max_operand", "splits")}),
    log:
        f"{R}/logs/build_synthetic_dataset/{{dataset}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.synthetic --params {params.spec:q} --outdir {output} > {log} 2>&1"
