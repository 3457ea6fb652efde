# Training data made from the data and models: step-controlled pairs (SCDPO; one job per seed, then
# joined), bridged pairs (DPO-BMC; an editor model or the synthetic task's minimal repair) and
# KTO's unpaired data (a generation's samples labelled by the answer checker).


rule step_controlled_generate:
    input:
        script=code("step_controlled"),
        data=lambda w: split_file(config["step_controlled"][w.pairs]["dataset"], config["step_controlled"][w.pairs]["split"]),
        model=lambda w: model_location(config["step_controlled"][w.pairs]["model"])[2],
    output:
        f"{R}/step_controlled/{{pairs}}/seed{{seed}}.jsonl",
    params:
        python=lambda w: generate_python(config["step_controlled"][w.pairs]),
        spec=lambda w: engine_params(config["step_controlled"][w.pairs], ("seeds", "model", "dataset")),
        model=lambda w: model_location(config["step_controlled"][w.pairs]["model"])[0],
        revision=lambda w: revision_arg(model_location(config["step_controlled"][w.pairs]["model"])[1]),
        flags=lambda w: model_flags(config["step_controlled"][w.pairs]["model"]),
    threads: lambda w: config["step_controlled"][w.pairs]["threads"]
    log:
        f"{R}/logs/step_controlled/{{pairs}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/step_controlled/{{pairs}}/seed{{seed}}.tsv"
    conda:
        "../envs/generate.yaml"
    shell:
        "{params.python} -m workflow_scripts.step_controlled generate --params {params.spec:q} --data {input.data} "
        "--model {params.model} {params.revision} {params.flags} --seed {wildcards.seed} --output {output} --threads {threads} > {log} 2>&1"


rule step_controlled_pairs:
    input:
        script=code("step_controlled"),
        data=lambda w: split_file(config["step_controlled"][w.pairs]["dataset"], config["step_controlled"][w.pairs]["split"]),
        seeds=lambda w: [f"{R}/step_controlled/{w.pairs}/seed{s}.jsonl" for s in config["step_controlled"][w.pairs]["seeds"]],
    output:
        f"{R}/step_controlled/{{pairs}}.jsonl",
    params:
        spec=lambda w: engine_params(config["step_controlled"][w.pairs], ("seeds", "model", "dataset")),
    log:
        f"{R}/logs/step_controlled/{{pairs}}/pairs.log",
    conda:
        "../envs/generate.yaml"
    shell:
        "python -m workflow_scripts.step_controlled pairs --params {params.spec:q} --data {input.data} "
        "--seed-files {input.seeds} --output {output} > {log} 2>&1"


rule bridge:
    input:
        script=code("bridge"),
        source=lambda w: data_file(config["bridges"][w.pairs]["source"]),
        editor=lambda w: bridge_editor(w)[2],
    output:
        pairs=f"{R}/bridge/{{pairs}}.jsonl",
        stats=f"{R}/bridge/{{pairs}}.stats.json",
    params:
        python=lambda w: generate_python(config["bridges"][w.pairs]),
        spec=lambda w: engine_params(config["bridges"][w.pairs], ("source",)),
        editor=lambda w: (f"--editor {bridge_editor(w)[0]} {revision_arg(bridge_editor(w)[1])} "
                          f"{model_flags(config['bridges'][w.pairs]['editor'])}" if bridge_editor(w)[0] else ""),
    threads: lambda w: config["bridges"][w.pairs]["threads"]
    log:
        f"{R}/logs/bridge/{{pairs}}.log",
    conda:
        "../envs/generate.yaml"
    shell:
        "{params.python} -m workflow_scripts.bridge --params {params.spec:q} --source {input.source} {params.editor} "
        "--output {output.pairs} --stats {output.stats} --threads {threads} > {log} 2>&1"


rule unpair:
    input:
        script=code("unpaired"),
        source=lambda w: data_file(config["unpaired"][w.pairs]["source"]),
    output:
        f"{R}/unpaired/{{pairs}}.jsonl",
    params:
        spec=lambda w: js(config["unpaired"][w.pairs]),
    log:
        f"{R}/logs/unpaired/{{pairs}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.unpaired --params {params.spec:q} --source {input.source} --output {output} > {log} 2>&1"
