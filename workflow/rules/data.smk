rule generate:
    input:
        unpack(step_input("generate")),
    output:
        **step_output("generate"),
    log:
        step_log("generate"),
    benchmark:
        f"{BENCH}/generate.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=2000,
        runtime=30,
    params:
        **step_params("generate"),
    shell:
        "{params.command}"
