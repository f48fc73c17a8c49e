"""`metasym bench rollout` smoke test: table, JSON keys with units, the docs section."""

import json

from metasym_core.cli import main
from metasym_core.models import native


def test_bench_rollout_quick(tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    assert main(["bench", "rollout", "--repeats", "3", "--batch", "8", "--horizon", "5", "--json",
                 "--doc", str(doc)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(out[-1])
    for key in ("b1_p50_ms", "b1_p99_ms", "baseline_b1_p50_ms", "b8_steps_per_s", "baseline_b8_steps_per_s"):
        assert figures[key] > 0
    assert figures["speedup_b8_vs_baseline"] > 0 and figures["cpu_model"] and figures["threads"] >= 1
    assert figures["kernel_isa"] in native.isas()
    assert "rollout kernel ISA level" in "\n".join(out)
    text = doc.read_text()
    assert "## Rollout" in text and "| metasym | 1 |" in text and "| baseline | 8 |" in text
    # rerunning replaces the section instead of appending a second one
    assert main(["bench", "rollout", "--repeats", "2", "--batch", "4", "--horizon", "3", "--doc", str(doc)]) == 0
    assert doc.read_text().count("## Rollout") == 1


def test_bench_bad_config_is_one_line_error(capsys):
    assert main(["bench", "rollout", "--config", "no_such_system"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config not found" in err[0]


def test_bench_rollout_spring_mesh_runs_the_numpy_path(tmp_path, capsys):
    """The 400-D spring mesh (encoder residual, beyond the kernel's size) runs the NumPy path at B=1, in a
    section of its own, without the quadrotor-sized targets."""
    doc = tmp_path / "benchmarks.md"
    assert main(["bench", "rollout", "--config", "spring_mesh", "--repeats", "2", "--batch", "4", "--horizon", "3",
                 "--json", "--doc", str(doc)]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["numpy_b1_p50_ms"] > 0 and "b1_p50_target_ms" not in figures
    text = doc.read_text()
    assert "## Rollout, spring_mesh" in text and "rollout --config spring_mesh" in text
    assert "ran on the NumPy path at B=1" in text and "Targets" not in text
