rule intervene_stage:
    input:
        unpack(step_input("intervene_stage")),
    output:
        **step_output("intervene_stage"),
    log:
        step_log("intervene_stage"),
    benchmark:
        f"{BENCH}/seed-{{seed}}/interventions/stage-{{stage}}.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    threads: THREADS
    resources:  # SLURM requests (docs/slurm.md); gpu=1 also counts against a local --resources gpu=N
        gpu=1,
        gpu_model=GPU_MODEL,
        mem_mb=8000,
        runtime=120,
    params:
        **step_params("intervene_stage"),
    shell:
        "{params.command}"
