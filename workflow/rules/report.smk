rule report:
    input:
        unpack(step_input("report")),
    output:
        **step_output(
            "report",
            accuracy=dict(caption="../report/accuracy.rst", category="Results", labels={"figure": "answer accuracy"}),
            oracle=dict(caption="../report/oracle.rst", category="Results", labels={"figure": "oracles"}),
            training=dict(caption="../report/training.rst", category="Results", labels={"figure": "training curves"}),
        ),
    log:
        step_log("report"),
    benchmark:
        f"{BENCH}/report.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=4000,
        runtime=30,
    params:
        **step_params("report"),
    shell:
        "{params.command}"
