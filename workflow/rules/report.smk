rule report:
    input:
        unpack(step_input("report")),
    output:
        **step_output(
            "report",
            report=dict(
                caption="../report/results.rst",
                category="Results",
                subcategory="all stages",
                labels={"item": "results page (markdown)"},
            ),
            page=dict(
                caption="../report/results-page.rst",
                category="Results",
                subcategory="all stages",
                labels={"item": "results page (HTML)"},
            ),
            accuracy_table=dict(
                caption="../report/accuracy-table.rst",
                category="Coconut",
                subcategory="all stages",
                labels={"item": "answer accuracy table"},
            ),
            accuracy=dict(
                caption="../report/accuracy.rst",
                category="Coconut",
                subcategory="all stages",
                labels={"item": "answer accuracy figure"},
            ),
            oracle=dict(
                caption="../report/oracle.rst",
                category="Oracles",
                subcategory="all stages",
                labels={"item": "exact match by thought figure"},
            ),
            training=dict(
                caption="../report/training.rst",
                category="Training",
                subcategory="all runs",
                labels={"item": "training loss figure"},
            ),
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
