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
    resources:
        gpu=1,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "cocoracle collect --params {PF} --stage {wildcards.stage} --split {wildcards.split} --data {DATA}"
        " --checkpoint {input[0]} --out {output} --log {log}"
