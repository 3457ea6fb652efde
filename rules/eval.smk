# Evaluation: lm-eval-harness on every run instance and base model of the tables.


rule lm_eval_tasks:
    """Task YAMLs for a synthetic split, written by the workflow."""
    input:
        script=script("lm_eval_tasks"),
        data=lambda w: split_file(config["evals"][w.eval]["synthetic"]["dataset"], config["evals"][w.eval]["synthetic"]["split"]),
    output:
        directory(f"{R}/eval_tasks/{{eval}}"),
    params:
        name=lambda w: config["evals"][w.eval]["synthetic"]["dataset"],
        max_gen_toks=lambda w: config["evals"][w.eval]["synthetic"]["max_gen_toks"],
        seed=lambda w: config["evals"][w.eval]["seed"],
    log:
        f"{R}/logs/lm_eval_tasks/{{eval}}.log",
    conda:
        "../envs/eval.yaml"
    shell:
        "python -m workflow_scripts.lm_eval_tasks --data {input.data} --name {params.name} --seed {params.seed} "
        "--max-gen-toks {params.max_gen_toks} --outdir {output} > {log} 2>&1"


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        scores=f"{R}/eval/{{subject}}/{{eval}}.json",
        samples=f"{R}/eval/{{subject}}/{{eval}}.samples.jsonl",
    params:
        spec=lambda w: js({k: v for k, v in config["evals"][w.eval].items() if k not in ("synthetic", "threads")}),
        model=lambda w: subject_model(w.subject)[0],
        revision=lambda w: revision_arg(subject_model(w.subject)[1]),
        trust=lambda w: trust_arg(subject_model_name(w.subject)),
        tasks=lambda w, input: f"--tasks-dir {input.tasks}" if "tasks" in input.keys() else "",
    threads: lambda w: config["evals"][w.eval]["threads"]
    log:
        f"{R}/logs/evaluate/{{subject}}/{{eval}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{subject}}/{{eval}}.tsv"
    conda:
        "../envs/eval.yaml"
    shell:
        "python -m workflow_scripts.evaluate --params {params.spec:q} --model {params.model} {params.revision} {params.trust} {params.tasks} "
        "--output {output.scores} --threads {threads} > {log} 2>&1"
