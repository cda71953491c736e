def oracle_base_input(wildcards):
    """The stage-0 checkpoint when the separate oracle is built on it."""
    return [SEPARATE_BASE] if wildcards.kind == "separate" and SEPARATE_BASE == f"{MODELS}/stage-0" else []


def oracle_base_flag(wildcards):
    return f" --base {SEPARATE_BASE}" if wildcards.kind == "separate" else ""


rule train_oracle:
    input:
        f"{MODELS}/stage-{{stage}}",
        oracle_base_input,
        train=f"{RESULTS}/activations/stage-{{stage}}/train",
        val=f"{RESULTS}/activations/stage-{{stage}}/val",
        data=f"{DATA}/train.parquet",
        code=CODE["train_oracle"],
    output:
        oracle=directory(f"{MODELS}/oracle/{{kind}}/stage-{{stage}}"),
        live=directory(f"{RESULTS}/oracle-train/{{kind}}/stage-{{stage}}"),
    params:
        oracle=lambda wildcards: param_values(PARAMS, oracle_train_keys(wildcards.kind)),
        base=oracle_base_flag,
    log:
        f"{LOGS}/oracle/train-{{kind}}-stage-{{stage}}.log",
    benchmark:
        f"{BENCH}/oracle/train-{{kind}}-stage-{{stage}}.tsv"
    threads: workflow.cores
    resources:  # SLURM requests (docs/slurm.md); gpu=1 also counts against a local --resources gpu=N
        gpu=1,
        gpu_model=GPU_MODEL,
        mem_mb=16000,
        runtime=480,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "cocoracle train-oracle --params {PF} --kind {wildcards.kind} --stage {wildcards.stage}"
        " --checkpoint {input[0]}{params.base} --train {input.train} --val {input.val} --data {DATA}"
        " --out {output.oracle} --live {output.live} --log {log}"


rule evaluate_oracles:
    input:
        checkpoint=f"{MODELS}/stage-{{stage}}",
        separate=f"{MODELS}/oracle/separate/stage-{{stage}}",
        self_oracle=f"{MODELS}/oracle/self/stage-{{stage}}",
        train=f"{RESULTS}/activations/stage-{{stage}}/train",
        test=f"{RESULTS}/activations/stage-{{stage}}/test",
        data=f"{DATA}/test.parquet",
        code=CODE["evaluate_oracle"],
    output:
        table=f"{RESULTS}/oracle/stage-{{stage}}.csv",
        metrics=f"{RESULTS}/oracle/stage-{{stage}}.json",
        predictions=f"{RESULTS}/oracle/stage-{{stage}}-predictions.parquet",
    params:
        oracle=param_values(PARAMS, ORACLE_SHARED_KEYS),
    log:
        f"{LOGS}/oracle/evaluate-stage-{{stage}}.log",
    benchmark:
        f"{BENCH}/oracle/evaluate-stage-{{stage}}.tsv"
    threads: workflow.cores
    resources:  # SLURM requests (docs/slurm.md); gpu=1 also counts against a local --resources gpu=N
        gpu=1,
        gpu_model=GPU_MODEL,
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "cocoracle evaluate-oracle --params {PF} --stage {wildcards.stage} --checkpoint {input.checkpoint}"
        " --separate {input.separate} --self {input.self_oracle} --train {input.train} --test {input.test} --data {DATA}"
        " --table {output.table} --metrics {output.metrics} --predictions {output.predictions} --log {log}"
