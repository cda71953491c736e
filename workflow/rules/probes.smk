rule probe_stage:
    input:
        unpack(step_input("probe_stage")),
    output:
        **step_output(
            "probe_stage",
            table=dict(caption="../report/probe-table.rst", category="Probes", labels={"stage": "{stage}", "what": "table"}),
            heatmap=dict(caption="../report/probe-heatmap.rst", category="Probes", labels={"stage": "{stage}", "what": "heatmap"}),
        ),
    params:
        **step_params("probe_stage"),
    log:
        step_log("probe_stage"),
    benchmark:
        f"{BENCH}/probes/stage-{{stage}}.tsv"
    threads: workflow.cores
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/cocoracle.yaml"
    shell:
        "{params.command}"
