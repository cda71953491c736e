rule collect_activations:
    input:
        f"{MODELS}/stage-{{stage}}",
        f"{DATA}/{{split}}.parquet",
        CODE["collect"],
    output:
        directory(f"{RESULTS}/activations/stage-{{stage}}/{{split}}"),
    params:
        activations=PARAMS["activations"],
    log:
        f"{LOGS}/collect/stage-{{stage}}-{{split}}.log",
    benchmark:
        f"{BENCH}/collect/stage-{{stage}}-{{split}}.tsv"
    threads: workflow.cores
    resources:  # SLURM requests (docs/slurm.md); gpu=1 also counts against a local --resources gpu=N
        gpu=1,
        gpu_model=GPU_MODEL,
        mem_mb=16000,
        runtime=120,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "cocoracle collect --params {PF} --stage {wildcards.stage} --split {wildcards.split} --data {DATA}"
        " --checkpoint {input[0]} --out {output} --log {log}"
