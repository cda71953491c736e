def previous_checkpoint(wildcards):
    stage = int(wildcards.stage)
    return [f"{MODELS}/stage-{stage - 1}"] if stage > 0 else []


def init_flag(wildcards):
    stage = int(wildcards.stage)
    return f" --init {MODELS}/stage-{stage - 1}" if stage > 0 else ""


rule train_stage:
    input:
        f"{DATA}/train.parquet",
        f"{DATA}/val.parquet",
        previous_checkpoint,
        CODE["train"],
    output:
        checkpoint=directory(f"{MODELS}/stage-{{stage}}"),
        live=directory(f"{RESULTS}/train/stage-{{stage}}"),
    params:
        model=PARAMS["model"],
        coconut=PARAMS["coconut"],
        train=PARAMS["train"],
        init=init_flag,
    log:
        f"{LOGS}/train/stage-{{stage}}.log",
    benchmark:
        f"{BENCH}/train/stage-{{stage}}.tsv"
    threads: workflow.cores
    resources:  # SLURM requests (docs/slurm.md); gpu also counts against a local --resources gpu=N
        gpu=config["train_processes"],
        gpu_model=GPU_MODEL,
        mem_mb=16000,
        runtime=480,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        TRAIN_LAUNCHER + "cocoracle train --params {PF} --stage {wildcards.stage} --data {DATA}{params.init}"
        " --out {output.checkpoint} --live {output.live} --log {log}"
