# The model card of every trained instance (with the evaluations the tables ask of it), and the optional
# push of a trained model with its card to the hub: never part of `all`;
# `snakemake results/pushed/<run>/seed<S>.json` with `push.repo` set.


localrules:
    model_card,
    push,


rule model_card:
    input:
        script=code("model_card"),
        run=f"{R}/train/{{run}}/seed{{seed}}/run.json",
        evals=P.outputs.card_evals,
    output:
        f"{R}/train/{{run}}/seed{{seed}}/model_card.md",
    log:
        f"{R}/logs/model_card/{{run}}/seed{{seed}}.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m workflow_scripts.model_card --run-json {input.run} --evals {input.evals} --output {output} > {log} 2>&1"


rule push:
    input:
        script=code("push_model"),
        model=f"{R}/train/{{run}}/seed{{seed}}/model",
        card=f"{R}/train/{{run}}/seed{{seed}}/model_card.md",
    output:
        f"{R}/pushed/{{run}}/seed{{seed}}.json",
    params:
        repo=P.outputs.push_repo,
        private="--private" if config["push"]["private"] else "",
    log:
        f"{R}/logs/push/{{run}}/seed{{seed}}.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m workflow_scripts.push_model --model {input.model} --card {input.card} --repo {params.repo} "
        "{params.private} --output {output} > {log} 2>&1"
