rule generate:
    input:
        CODE["generate"],
    output:
        expand(f"{DATA}/{{split}}.parquet", split=SPLITS),
    params:
        data=PARAMS["data"],
    log:
        f"{LOGS}/generate.log",
    benchmark:
        f"{BENCH}/generate.tsv"
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "cocoracle generate --params {PF} --out {DATA} --log {log}"
