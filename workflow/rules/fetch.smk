# The only step that needs the network: a local rule, so that under SLURM it runs where Snakemake does (the
# login node) and the compute nodes, which often have no internet, only read the fetched directory.
localrules:
    fetch_model,


rule fetch_model:
    input:
        unpack(step_input("fetch_model")),
    output:
        **step_output("fetch_model"),
    log:
        step_log("fetch_model"),
    benchmark:
        f"{BENCH}/fetch/{{base}}.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        **step_params("fetch_model"),
    shell:
        "{params.command}"
