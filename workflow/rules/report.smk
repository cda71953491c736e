rule report:
    input:
        eval=expand(f"{RESULTS}/eval/stage-{{stage}}.json", stage=STAGES),
        probes=expand(f"{RESULTS}/probes/stage-{{stage}}.json", stage=LATENT_STAGES),
        heatmaps=expand(f"{RESULTS}/probes/stage-{{stage}}.png", stage=LATENT_STAGES),
        oracle_tables=expand(f"{RESULTS}/oracle/stage-{{stage}}.csv", stage=ORACLE_STAGES),
        oracle_metrics=expand(f"{RESULTS}/oracle/stage-{{stage}}.json", stage=ORACLE_STAGES),
        train=expand(f"{RESULTS}/train/stage-{{stage}}", stage=STAGES)
        + [f"{RESULTS}/oracle-train/{kind}/stage-{stage}" for stage in ORACLE_STAGES for kind in ORACLE_KINDS],
        code=CODE["report"],
    output:
        report=f"{RESULTS}/report.md",
        plots=expand(f"{RESULTS}/report/{{name}}.png", name=REPORT_PLOTS),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "cocoracle report --eval {input.eval} --probes {input.probes} --heatmaps {input.heatmaps}"
        " --oracle-tables {input.oracle_tables} --oracle-metrics {input.oracle_metrics} --train {input.train}"
        " --out {output.report} --plots {RESULTS}/report --log {log}"
