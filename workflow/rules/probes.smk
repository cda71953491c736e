rule probe_stage:
    input:
        unpack(step_input("probe_stage")),
    output:
        **step_output(
            "probe_stage",
            table=dict(
                caption="../report/probe-table.rst",
                category="Probes",
                subcategory="seed {seed}, stage {stage}",
                labels={"item": "per-thought table"},
            ),
            heatmap=dict(
                caption="../report/probe-heatmap.rst",
                category="Probes",
                subcategory="seed {seed}, stage {stage}",
                labels={"item": "per-thought heatmap"},
            ),
            steps_table=dict(
                caption="../report/probe-steps-table.rst",
                category="Probes",
                subcategory="seed {seed}, stage {stage}",
                labels={"item": "step x position table"},
            ),
            steps_heatmap=dict(
                caption="../report/probe-steps-heatmap.rst",
                category="Probes",
                subcategory="seed {seed}, stage {stage}",
                labels={"item": "step x position heatmap"},
            ),
        ),
    log:
        step_log("probe_stage"),
    benchmark:
        f"{BENCH}/seed-{{seed}}/probes/stage-{{stage}}.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    threads: THREADS
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=16000,
        runtime=240,
    params:
        **step_params("probe_stage"),
    shell:
        "{params.command}"
