# The paper's table and the run's figures (`cumo report tables|plots`), with captions for `snakemake --report`.


rule tables:
    input:
        metrics=METRICS,
        paper=str(PAPER_RESULTS),
    output:
        csv=report(
            f"{RUN}/tables/main.csv", caption="../report/tables.rst", category="Tables"
        ),
        md=f"{RUN}/tables/main.md",
        tex=f"{RUN}/tables/main.tex",
    log:
        f"{RUN}/logs/report/tables.log",
    conda:
        "../../envs/report.yaml"
    params:
        eval_dir=run_folder("eval"),
        out=output_dir,
        models=MODELS,
        benchmarks=config["benchmarks"],
    shell:
        "cumo report tables --eval {params.eval_dir} --paper {input.paper} --models {params.models}"
        " --benchmarks {params.benchmarks} --out {params.out} > {log} 2>&1"


rule plots:
    input:
        metrics=METRICS,
        trained=expand(f"{RUN}/models/{{model}}/{{stage}}", model=TRAINED, stage=STAGES),
        paper=str(PAPER_RESULTS),
    output:
        benchmarks=report(
            expand(f"{RUN}/plots/benchmarks.{{ext}}", ext=("png", "pdf")),
            caption="../report/benchmarks.rst",
            category="Plots",
        ),
        loss=report(
            expand(
                f"{RUN}/plots/loss_{{model}}.{{ext}}",
                model=TRAINED,
                ext=("png", "pdf"),
            ),
            caption="../report/loss.rst",
            category="Plots",
        ),
        aux=report(
            expand(
                f"{RUN}/plots/aux_{{model}}.{{ext}}", model=TRAINED, ext=("png", "pdf")
            ),
            caption="../report/aux.rst",
            category="Plots",
        ),
        expert_load=report(
            expand(
                f"{RUN}/plots/expert_load_{{model}}.{{ext}}",
                model=TRAINED,
                ext=("png", "pdf"),
            ),
            caption="../report/expert_load.rst",
            category="Plots",
        ),
    log:
        f"{RUN}/logs/report/plots.log",
    conda:
        "../../envs/report.yaml"
    params:
        eval_dir=run_folder("eval"),
        models_dir=run_folder("models"),
        out=output_dir,
        models=MODELS,
        benchmarks=config["benchmarks"],
    shell:
        "cumo report plots --eval {params.eval_dir} --models-dir {params.models_dir} --paper {input.paper}"
        " --model-names {params.models} --benchmarks {params.benchmarks} --out {params.out} > {log} 2>&1"


localrules:
    download,
    plots,
