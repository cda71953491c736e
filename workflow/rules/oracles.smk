rule train_oracle:
    input:
        unpack(step_input("train_oracle")),
    output:
        **step_output("train_oracle"),
    log:
        step_log("train_oracle"),
    benchmark:
        f"{BENCH}/seed-{{seed}}/oracle/train-{{kind}}-stage-{{stage}}.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    threads: THREADS
    resources:  # SLURM requests (docs/slurm.md); gpu=1 also counts against a local --resources gpu=N
        gpu=1,
        gpu_model=GPU_MODEL,
        mem_mb=16000,
        runtime=480,
    params:
        **step_params("train_oracle"),
    shell:
        "{params.command}"


rule evaluate_oracles:
    input:
        unpack(step_input("evaluate_oracles")),
    output:
        **step_output(
            "evaluate_oracles",
            table=dict(
                caption="../report/oracle-table.rst",
                category="Oracles",
                subcategory="seed {seed}, stage {stage}",
                labels={"item": "results table"},
            ),
        ),
    log:
        step_log("evaluate_oracles"),
    benchmark:
        f"{BENCH}/seed-{{seed}}/oracle/evaluate-stage-{{stage}}.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    threads: THREADS
    resources:  # SLURM requests (docs/slurm.md); gpu=1 also counts against a local --resources gpu=N
        gpu=1,
        gpu_model=GPU_MODEL,
        mem_mb=16000,
        runtime=240,
    params:
        **step_params("evaluate_oracles"),
    shell:
        "{params.command}"
