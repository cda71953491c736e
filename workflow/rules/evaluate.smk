rule evaluate_stage:
    input:
        unpack(step_input("evaluate_stage")),
    output:
        **step_output("evaluate_stage"),
    log:
        step_log("evaluate_stage"),
    benchmark:
        f"{BENCH}/seed-{{seed}}/evaluate/stage-{{stage}}.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    threads: THREADS
    resources:  # SLURM requests (docs/slurm.md); gpu=1 also counts against a local --resources gpu=N
        gpu=1,
        gpu_model=GPU_MODEL,
        mem_mb=8000,
        runtime=120,
    params:
        **step_params("evaluate_stage"),
    shell:
        "{params.command}"
