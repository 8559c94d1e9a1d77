# The three stages of each model trained here (`cumo launch ... -- train`), and the conversion of a released
# checkpoint that is evaluated instead (`cumo convert from-released`).


# The declared output is the exported model (with finished.json and metrics.jsonl); the resumable state is
# a param, outside it, because Snakemake deletes a job's outputs before it runs (and after it fails).
rule train:
    input:
        data=f"{RUN}/data/{{stage}}.arrow",
        previous=previous_model,
        base=base_model_markers,
    output:
        directory(f"{RUN}/models/{{model}}/{{stage}}"),
    log:
        f"{RUN}/logs/train/{{model}}/{{stage}}.log",
    benchmark:
        f"{RUN}/benchmarks/train/{{model}}/{{stage}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: train_threads
    resources:
        nodes=train_nodes,
        tasks_per_node=train_tasks_per_node,
        cpus_per_task=train_cpus_per_task,
        gres=train_gres,
        mpi=train_mpi,
        mem_mb=train_mem_mb,
    params:
        launch=launch_flags,
        preset=model_preset,
        data_root=DATA,
        checkpoints=checkpoints_dir,
        previous=previous_flag,
        base=base_model_flags,
        workers=loader_workers,
        recipe=recipe_flags,
    # exec: no shell stays between Snakemake and `cumo launch`. A SIGTERM reaches every process of a Slurm
    # step; a waiting bash dies of it, Snakemake takes the job for failed and ends, and Slurm kills what is
    # left of a step when its task has ended (src/slurmd/slurmstepd/mgr.c): the ranks still saving (issue 18).
    shell:
        "exec cumo launch {params.launch} -- train --stage {wildcards.stage} --preset {params.preset}"
        " --data {input.data} --data-root {params.data_root} --out {output}"
        " --checkpoints {params.checkpoints} {params.previous} {params.base} --workers {params.workers}"
        " {params.recipe} > {log} 2>&1"


# Streamed a tensor at a time: the job holds one 5 GB shard and the tensors it is making (profiles/default).
rule convert_released:
    input:
        released_input,
    output:
        directory(f"{RUN}/models/{{model}}/released"),
    log:
        f"{RUN}/logs/convert/{{model}}.log",
    benchmark:
        f"{RUN}/benchmarks/convert/{{model}}.tsv"
    conda:
        "../../envs/train.yaml"
    params:
        checkpoint=released_checkpoint,
        preset=released_preset_flag,
    shell:
        "cumo convert from-released {params.checkpoint} {output} {params.preset} > {log} 2>&1"


for stage in STAGES:

    rule:
        name:
            stage
        input:
            expand(f"{RUN}/models/{{model}}/{stage}", model=TRAINED),
