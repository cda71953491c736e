rule train_stage:
    input:
        unpack(step_input("train_stage")),
    output:
        **step_output("train_stage"),
    log:
        step_log("train_stage"),
    benchmark:
        f"{BENCH}/seed-{{seed}}/train/stage-{{stage}}.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    threads: THREADS
    resources:  # SLURM requests (docs/slurm.md); gpu also counts against a local --resources gpu=N
        gpu=config["train_processes"],
        gpu_model=GPU_MODEL,
        mem_mb=16000,
        runtime=480,
    params:
        **step_params("train_stage"),
    shell:
        "{params.command}"
