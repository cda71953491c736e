rule evaluate_stage:
    input:
        f"{MODELS}/stage-{{stage}}",
        expand(f"{DATA}/{{split}}.parquet", split=PARAMS["evaluate"]["splits"]),
        CODE["evaluate"],
    output:
        metrics=f"{RESULTS}/eval/stage-{{stage}}.json",
        predictions=f"{RESULTS}/eval/stage-{{stage}}-predictions.parquet",
    params:
        evaluate=PARAMS["evaluate"],
    log:
        f"{LOGS}/evaluate/stage-{{stage}}.log",
    benchmark:
        f"{BENCH}/evaluate/stage-{{stage}}.tsv"
    threads: workflow.cores
    resources:  # SLURM requests (docs/slurm.md); gpu=1 also counts against a local --resources gpu=N
        gpu=1,
        gpu_model=GPU_MODEL,
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "cocoracle evaluate --params {PF} --stage {wildcards.stage} --data {DATA} --checkpoint {input[0]}"
        " --metrics {output.metrics} --predictions {output.predictions} --log {log}"

