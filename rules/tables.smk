# Tables from the eval JSON, and the provenance manifest.


rule table:
    input:
        script=code("tables"),
        evals=lambda w: [f for evals in eval_files(w.table).values() for files in evals.values() for f in files],
    output:
        tex=f"{R}/tables/{{table}}.tex",
        csv=f"{R}/tables/{{table}}.csv",
        md=report(f"{R}/tables/{{table}}.md", category="Tables"),
    params:
        spec=lambda w: js({**config["tables"][w.table], "name": w.table}),
        files=lambda w: json_file(eval_files(w.table)),
        prefix=lambda w: f"{R}/tables/{w.table}",
    log:
        f"{R}/logs/table/{{table}}.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m workflow_scripts.tables --params {params.spec:q} --files {params.files} --prefix {params.prefix} "
        "> {log} 2>&1"


rule manifest:
    input:
        script=code("manifest"),
        tables=table_outputs(),
        plots=plot_outputs(),
        cards=card_outputs(),
    output:
        f"{R}/manifest.json",
    params:
        config=lambda w: json_file(config),
    log:
        f"{R}/logs/manifest.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m workflow_scripts.manifest --config {params.config} "
        "--output {output} > {log} 2>&1"
