rule report:
    input:
        unpack(step_input("report")),
    output:
        **step_output(
            "report",
            report=dict(
                caption="../report/results.rst",
                category="Results",
                subcategory="seed {seed}",
                labels={"item": "results page (markdown)"},
            ),
            page=dict(
                caption="../report/results-page.rst",
                category="Results",
                subcategory="seed {seed}",
                labels={"item": "results page (HTML)"},
            ),
            accuracy_table=dict(
                caption="../report/accuracy-table.rst",
                category="Coconut",
                subcategory="seed {seed}",
                labels={"item": "answer accuracy table"},
            ),
            accuracy=dict(
                caption="../report/accuracy.rst",
                category="Coconut",
                subcategory="seed {seed}",
                labels={"item": "answer accuracy figure"},
            ),
            oracle=dict(
                caption="../report/oracle.rst",
                category="Oracles",
                subcategory="seed {seed}",
                labels={"item": "exact match by thought figure"},
            ),
            training=dict(
                caption="../report/training.rst",
                category="Training",
                subcategory="seed {seed}",
                labels={"item": "training loss figure"},
            ),
        ),
    log:
        step_log("report"),
    benchmark:
        f"{BENCH}/seed-{{seed}}/report.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=4000,
        runtime=30,
    params:
        **step_params("report"),
    shell:
        "{params.command}"


rule seed_report:
    input:
        unpack(step_input("seed_report")),
    output:
        **step_output(
            "seed_report",
            report=dict(
                caption="../report/seeds.rst",
                category="Results",
                subcategory="across seeds",
                labels={"item": "across-seed results (markdown)"},
            ),
            table=dict(
                caption="../report/seeds-table.rst",
                category="Results",
                subcategory="across seeds",
                labels={"item": "across-seed table"},
            ),
            plot=dict(
                caption="../report/seeds-plot.rst",
                category="Results",
                subcategory="across seeds",
                labels={"item": "across-seed figure"},
            ),
        ),
    log:
        step_log("seed_report"),
    benchmark:
        f"{BENCH}/seed-report.tsv"
    conda:
        "../../envs/cocoracle.yaml"
    resources:  # SLURM requests (docs/slurm.md)
        mem_mb=4000,
        runtime=30,
    params:
        **step_params("seed_report"),
    shell:
        "{params.command}"
