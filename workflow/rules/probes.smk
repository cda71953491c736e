rule probe_stage:
    input:
        train=f"{RESULTS}/activations/stage-{{stage}}/train",
        val=f"{RESULTS}/activations/stage-{{stage}}/val",
        test=f"{RESULTS}/activations/stage-{{stage}}/test",
        code=CODE["probe"],
    output:
        table=f"{RESULTS}/probes/stage-{{stage}}.csv",
        heatmap=f"{RESULTS}/probes/stage-{{stage}}.png",
        metrics=f"{RESULTS}/probes/stage-{{stage}}.json",
    params:
        probes=PARAMS["probes"],
    log:
        f"{LOGS}/probes/stage-{{stage}}.log",
    benchmark:
        f"{BENCH}/probes/stage-{{stage}}.tsv"
    threads: workflow.cores
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "cocoracle probe --params {PF} --stage {wildcards.stage} --train {input.train} --val {input.val}"
        " --test {input.test} --table {output.table} --heatmap {output.heatmap} --metrics {output.metrics}"
        " --log {log}"
