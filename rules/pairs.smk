# Training data made from the data and models: step-controlled pairs (SCDPO; one job per seed, then
# joined), bridged pairs (DPO-BMC; an editor model or the synthetic task's minimal repair) and
# KTO's unpaired data (a generation's samples labelled by the answer checker).


rule step_controlled_generate:
    input:
        script=code("step_controlled"),
        data=P.step_controlled.data,
        model=P.step_controlled.model.files,
    output:
        f"{R}/step_controlled/{{pairs}}/seed{{seed}}.jsonl",
    params:
        python=P.step_controlled.python,
        spec=P.step_controlled.spec,
        model=P.step_controlled.model.args,
    threads: lookup(dpath="step_controlled/{pairs}/threads", within=config)
    log:
        f"{R}/logs/step_controlled/{{pairs}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/step_controlled/{{pairs}}/seed{{seed}}.tsv"
    conda:
        "../envs/generate.yaml"
    shell:
        "{params.python} -m workflow_scripts.step_controlled generate --params {params.spec:q} --data {input.data} "
        "{params.model} --seed {wildcards.seed} --output {output} --threads {threads} > {log} 2>&1"


rule step_controlled_pairs:
    input:
        script=code("step_controlled"),
        data=P.step_controlled.data,
        seeds=P.step_controlled.seed_files,
    output:
        f"{R}/step_controlled/{{pairs}}.jsonl",
    params:
        spec=P.step_controlled.spec,
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
        source=P.bridge.source,
        editor=P.bridge.editor.files,
    output:
        pairs=f"{R}/bridge/{{pairs}}.jsonl",
        stats=f"{R}/bridge/{{pairs}}.stats.json",
    params:
        python=P.bridge.python,
        spec=P.bridge.spec,
        editor=P.bridge.editor.args,
    threads: lookup(dpath="bridges/{pairs}/threads", within=config)
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
        source=P.unpaired.source,
    output:
        f"{R}/unpaired/{{pairs}}.jsonl",
    params:
        spec=P.unpaired.spec,
    log:
        f"{R}/logs/unpaired/{{pairs}}.log",
    conda:
        "../envs/data.yaml"
    shell:
        "python -m workflow_scripts.unpaired --params {params.spec:q} --source {input.source} --output {output} > {log} 2>&1"
