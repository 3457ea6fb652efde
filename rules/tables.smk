# Tables from the eval JSON, and the provenance manifest.


rule table:
    input:
        script=code("tables"),
        evals=P.outputs.table_evals,
    output:
        tex=f"{R}/tables/{{table}}.tex",
        csv=f"{R}/tables/{{table}}.csv",
        md=report(f"{R}/tables/{{table}}.md", category="Tables"),
    params:
        spec=P.outputs.table_spec,
        files=P.outputs.table_files,
        prefix=f"{R}/tables/{{table}}",
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
        tables=P.outputs.tables(),
        plots=P.outputs.plots(),
        cards=P.outputs.cards(),
    output:
        f"{R}/manifest.json",
    params:
        config=P.outputs.manifest_config,
    log:
        f"{R}/logs/manifest.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m workflow_scripts.manifest --config {params.config} "
        "--output {output} > {log} 2>&1"
