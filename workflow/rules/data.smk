rule generate:
    input:
        unpack(step_input("generate")),
    output:
        **step_output("generate"),
    params:
        **step_params("generate"),
    log:
        step_log("generate"),
    benchmark:
        f"{BENCH}/generate.tsv"
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "{params.command}"
