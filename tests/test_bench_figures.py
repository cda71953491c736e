"""scripts/bench.py's one table: every benchmark's headline figures, gathered from the scripts' output, beside
issue 13's targets."""
from __future__ import annotations

from pathlib import Path

from conftest import load_script

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_a_printed_figure_is_gathered_back(capsys):
    figures = load_script("figures")
    figures.figure("probes speed-up", 2.36, "x", at_least=5)
    print("a table line")
    lines = capsys.readouterr().out.splitlines(keepends=True)
    assert figures.gathered(lines) == [{"name": "probes speed-up", "value": 2.36, "unit": "x", "at_least": 5,
                                        "at_most": None}]


def test_the_table_says_whether_each_target_is_met():
    figures = load_script("figures")
    table = figures.table([
        ("bench_probes", {"name": "speed-up", "value": 2.36, "unit": "x", "at_least": 5, "at_most": None}),
        ("bench_noop", {"name": "dvc status", "value": 1.43, "unit": "s", "at_least": None, "at_most": 5}),
        ("bench_training", {"name": "MFU", "value": 0.297, "unit": "%", "at_least": 0.5, "at_most": None}),
        ("bench_oracle_step", {"name": "examples/s", "value": 573.2, "unit": "", "at_least": None, "at_most": None}),
        ("bench_probes", {"name": "probes outside 0.01", "value": 0, "unit": "", "at_least": None, "at_most": 0})])
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert [(r[2], r[3], r[4].rstrip(" |")) for r in rows] == [
        ("2.360x", "≥ 5.000x", "no"), ("1.43 s", "≤ 5.00 s", "yes"), ("29.7%", "≥ 50.0%", "no"), ("573.2", "", ""),
        ("0", "≤ 0", "yes")]


def test_bench_passes_a_scripts_output_through_and_keeps_its_figures(tmp_path, monkeypatch, capsys):
    bench = load_script("bench")
    (tmp_path / "figures.py").write_text((SCRIPTS / "figures.py").read_text())
    (tmp_path / "fake_bench.py").write_text("from figures import figure\nprint('a table line')\n"
                                            "figure('no-op planning', 1.5, 's', at_most=5)\n")
    monkeypatch.setattr(bench, "HERE", tmp_path)
    rc, lines = bench.run("fake_bench.py", [])
    out = capsys.readouterr().out
    assert rc == 0 and out == "a table line\n"
    assert [f["name"] for f in bench.gathered(lines)] == ["no-op planning"]
