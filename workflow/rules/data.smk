# The data tree: downloads of the declared sources (cumo/data/sources.yaml) or the shapes world, then each
# stage's mixture validated into the Arrow file training reads. `cumo download`, `cumo synthetic`, `cumo mixture`.


# One job per source; its marker is the only output, so the fetched files (often hundreds of GB, resumed
# with Range requests) are never deleted by Snakemake before a retry, nor the lock file it writes pins to.
rule download:
    input:
        required_markers,
    output:
        f"{DATA}/{{folder}}/.{{source}}.done",
    log:
        f"{RUN}/logs/download/{{folder}}/{{source}}.log",
    benchmark:
        f"{RUN}/benchmarks/download/{{folder}}/{{source}}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        data_root=marker_data_root,
    shell:
        "cumo download {wildcards.source} --data-root {params.data_root} > {log} 2>&1"


rule synthetic:
    output:
        # First: the data root is its folder (params.data_root).
        benchmarks=directory(f"{DATA}/eval"),
        jsons=expand(f"{DATA}/jsons/synthetic_{{stage}}.json", stage=STAGES),
    log:
        f"{RUN}/logs/synthetic.log",
    benchmark:
        f"{RUN}/benchmarks/synthetic.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        data_root=output_dir,
        world=synthetic_flags,
    shell:
        "cumo synthetic --data-root {params.data_root} {params.world} > {log} 2>&1"


# Every image is decoded once, in parallel, and one that fails is a counted drop (issue 17): otherwise a
# corrupt one is found by training, mid-run (cumo/data/README.md gives the cost).
rule mixture:
    input:
        mixture_inputs,
    output:
        arrow=f"{RUN}/data/{{stage}}.arrow",
        stats=f"{RUN}/data/{{stage}}.stats.json",
    log:
        f"{RUN}/logs/mixture/{{stage}}.log",
    benchmark:
        f"{RUN}/benchmarks/mixture/{{stage}}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        jsons=mixture_jsons,
        data_root=DATA,
        image_folder=image_folder_flag,
    shell:
        "cumo mixture {params.jsons} --data-root {params.data_root} {params.image_folder} --verify-images"
        " --out {output.arrow} --stats {output.stats} > {log} 2>&1"
