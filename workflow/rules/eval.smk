# Each (model, benchmark) on its own: `cumo eval` writes OUT/predictions.jsonl (resumable, appended per
# shard, so not a declared output that Snakemake would delete on a retry) and OUT/metrics.json.


rule evaluate:
    input:
        model=evaluated_model,
        data=eval_data,
    output:
        f"{RUN}/eval/{{model}}/{{bench}}/metrics.json",
    log:
        f"{RUN}/logs/eval/{{model}}/{{bench}}.log",
    benchmark:
        f"{RUN}/benchmarks/eval/{{model}}/{{bench}}.tsv"
    conda:
        "../../envs/eval.yaml"
    resources:
        gres=eval_gres,
        mem_mb=eval_mem_mb,
        cpus_per_task=config["eval"]["cpus"],
    params:
        data_root=DATA,
        out=output_dir,
        batch_size=config["eval"]["batch_size"],
        shards=config["eval"]["shards"],
        gpus_per_shard=gpus_per_shard,
        device=config["eval"]["device"],
        dtype=config["eval"]["dtype"],
        judge=judge_flags,
        variant=eval_flags,
    # exec: no bash between Snakemake and `cumo eval` to die of a Slurm step's SIGTERM (rules/train.smk).
    shell:
        "exec cumo eval {wildcards.bench} --model {input.model} --data-root {params.data_root} --out {params.out}"
        " --batch-size {params.batch_size} --shards {params.shards} --gpus-per-shard {params.gpus_per_shard}"
        " --device {params.device}"
        " --dtype {params.dtype} {params.variant} {params.judge} > {log} 2>&1"


for bench in config["benchmarks"]:

    rule:
        name:
            bench
        input:
            metrics_of(bench),
