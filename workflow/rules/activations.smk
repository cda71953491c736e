rule collect_activations:
    input:
        unpack(step_input("collect_activations")),
    output:
        **step_output("collect_activations"),
    log:
        step_log("collect_activations"),
    benchmark:
        f"{BENCH}/seed-{{seed}}/collect/stage-{{stage}}-{{split}}.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    threads: THREADS
    resources:  # SLURM requests (docs/slurm.md); gpu=1 also counts against a local --resources gpu=N
        gpu=1,
        gpu_model=GPU_MODEL,
        mem_mb=16000,
        runtime=120,
    params:
        **step_params("collect_activations"),
    shell:
        "{params.command}"
