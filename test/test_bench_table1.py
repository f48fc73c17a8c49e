"""Smoke test of `metasym bench table1 --quick --ablate-meta --ablate-attention` (quadrotor): outputs exist
and are well formed."""

import json
import math

import pytest

from metasym_core.bench.table1 import run_table1_bench
from metasym_core.cli import main
from metasym_core.errors import MetaSymError


@pytest.mark.slow
def test_table1_quick_quadrotor(tmp_path, capsys):
    out, doc = tmp_path / "t1", tmp_path / "benchmarks.md"
    assert main(["bench", "table1", "--system", "quadrotor", "--quick", "--out", str(out), "--doc", str(doc),
                 "--json", "--ablate-meta", "--ablate-attention"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    models = ("metasym", "metasym_unadapted", "metasym_nometa", "metasym_nometa_unadapted",
              "metasym_no_meta_attention", "hold_last", "train_mean", "linear", "transformer", "dhnn", "mlp")
    for model in models:
        for what in ("ood_mse", "ood_mse_std", "id_mse", "params", "rollout_b1_h30_ms"):
            value = figures[f"quadrotor_{model}_{what}"]
            assert math.isfinite(value) and value >= 0, (model, what, value)
    assert "quadrotor_quantum_lstm_ood_mse" not in figures  # not applicable
    for key in ("metasym", "metasym_nometa", "metasym_no_meta_attention"):  # each seed's runs kept apart
        assert (out / "quadrotor" / "seed0" / key / "final.pt").is_file(), key
    # skill against holding the state: 0 for holding itself, 1 − MSE ratio for the others, per horizon step too
    assert figures["quadrotor_hold_last_skill"] == 0.0 and figures["quadrotor_hold_last_skill_h1"] == 0.0
    for model in models:
        ratio = figures[f"quadrotor_{model}_ood_mse"] / figures["quadrotor_hold_last_ood_mse"]
        assert figures[f"quadrotor_{model}_skill"] == pytest.approx(1 - ratio, rel=1e-9, abs=1e-12)
        assert all(math.isfinite(figures[f"quadrotor_{model}_skill_h{k}"]) for k in (1, 10))
    assert figures["quadrotor_hold_last_id_skill"] == 0.0  # in-distribution: held-out training-range systems
    assert figures["quadrotor_metasym_id_mse"] != figures["quadrotor_metasym_ood_mse"]
    assert figures["quadrotor_linear_skill"] > 0  # the linear reference beats holding the state
    assert figures["quadrotor_metasym_over_linear"] > 0
    # D.3: no meta-attention, so fewer parameters (the decoder's only: the encoder latents are not read)
    assert 0 < figures["quadrotor_metasym_no_meta_attention_params"] < figures["quadrotor_metasym_params"]
    assert figures["quadrotor_metasym_over_metasym_no_meta_attention"] > 0
    assert figures["quadrotor_metasym_over_transformer"] > 0
    assert figures["quadrotor_metasym_rollout_over_simulator"] > 0
    assert figures["quadrotor_metasym_encoder_symplectic_error"] < 1e-10
    assert 0 <= figures["quadrotor_metasym_decoder_eps"] < 100
    # parameter budgets matched to MetaSym's within 15 %
    for model in ("transformer", "dhnn", "mlp"):
        assert abs(figures[f"quadrotor_{model}_params"] / figures["quadrotor_metasym_params"] - 1) < 0.15
    data = json.loads((out / "table1.json").read_text())
    assert data["quick"] and data["figures"]["quadrotor_mlp_ood_mse"] == figures["quadrotor_mlp_ood_mse"]
    curves = data["systems"]["quadrotor"]["mse_vs_horizon"]
    assert set(curves) == set(models)
    assert all(len(c) == 30 for c in curves.values())
    trained = ("metasym", "metasym_nometa", "metasym_no_meta_attention", "transformer", "dhnn", "mlp")
    training = data["systems"]["quadrotor"]["training_curves"]
    assert set(training) == set(trained)
    assert training["metasym"]["phase_change"] is not None and training["metasym"]["val"]
    assert all(len(c["step"]) == len(c["train"]) > 0 and len(c["val_step"]) == len(c["val"]) > 0
               for c in training.values())
    assert (out / "table1_quadrotor_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = (out / "table1_quadrotor.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    text = doc.read_text()
    assert "## Table 1" in text and "| quadrotor | MetaSym (adapted) |" in text and "25.9 (9.0)" in text
    assert "| quadrotor | MetaSym w/o meta-attention (D.3 a: pooled, not adapted) |" in text
    assert "| quadrotor | MetaSym w/o meta-attention block (D.3 b: encoder unused) |" in text
    assert "--ablate-attention" in text and "ablation D.3" in text
    assert "in-distribution MSE (skill)" in text and "validation (early stopping)" in text
    # early stopping watched held-out training-range systems, never the OOD test systems
    names = sorted(p.name for p in (out / "data").glob("*.npz"))
    assert any("_val_train7_" in n for n in names) and any("_id_train3_" in n for n in names), names


def test_table1_unknown_system(tmp_path):
    with pytest.raises(MetaSymError, match="unknown system"):
        run_table1_bench(["pendulum"], quick=True, doc=None, out_dir=tmp_path)


def test_table1_conservative_needs_the_spring_mesh(tmp_path):
    with pytest.raises(MetaSymError, match="spring_mesh only"):
        run_table1_bench(["quadrotor"], quick=True, doc=None, out_dir=tmp_path, conservative=True)


def test_table1_reports_a_failed_system_and_goes_on(tmp_path, monkeypatch):
    import metasym_core.bench.table1 as table1

    def boom(*args, **kwargs):
        raise MetaSymError("training loss is inf at step 0")

    monkeypatch.setattr(table1, "run_system", boom)
    doc = tmp_path / "b.md"
    figures = table1.run_table1_bench(["quadrotor"], quick=True, doc=doc, out_dir=tmp_path, log=lambda *_: None)
    assert set(figures) == {"table1_wall_s"}
    failed = json.loads((tmp_path / "table1.json").read_text())["failed"]
    assert failed == {"quadrotor": "training loss is inf at step 0"}
    assert "quadrotor: **failed**" in doc.read_text()


@pytest.mark.slow
def test_table1_quick_conservative_spring_mesh_reports_energy(tmp_path, capsys):
    """Ablation D.1: the undamped mesh, with the energy of every model's rollouts (figures and plot)."""
    out, doc = tmp_path / "t1", tmp_path / "benchmarks.md"
    assert main(["bench", "table1", "--system", "spring_mesh", "--quick", "--conservative", "--out", str(out),
                 "--doc", str(doc), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    energy = {k: v for k, v in figures.items() if k.endswith("_energy_rel_err_last_step")}
    for model in ("metasym", "transformer", "dhnn", "mlp"):
        assert math.isfinite(energy[f"spring_mesh_conservative_{model}_energy_rel_err_last_step"])
    assert energy["spring_mesh_conservative_hold_last_energy_rel_err_last_step"] < 1e-3  # conserved truth
    png = (out / "table1_spring_mesh_conservative.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "energy at the last rollout step" in doc.read_text()


def test_table1_bad_device_is_a_one_line_error(tmp_path):
    with pytest.raises(MetaSymError, match="device"):
        run_table1_bench(["quadrotor"], quick=True, doc=None, out_dir=tmp_path, device="tpu")


def test_bench_with_options_only_runs_table1(tmp_path, capsys):
    """`metasym bench --system S ...` (the issue's spelling) is `metasym bench table1 --system S ...`."""
    assert main(["bench", "--system", "quadrotor", "--quick", "--device", "tpu", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metasym: error:") and "device" in err[0]
    assert not list(tmp_path.glob("*.json"))


def test_table1_reports_into_its_run_folder_and_into_the_docs_only_when_asked(tmp_path, monkeypatch):
    """Issue 19 item 4: the report section goes to <out>/table1.md; docs/benchmarks.md only with --update-docs
    (or another file with --doc)."""
    import metasym_core.bench.cli as bench_cli
    import metasym_core.bench.table1 as table1

    monkeypatch.setattr(table1, "run_system", lambda *a, **k: (_ for _ in ()).throw(MetaSymError("no training")))
    docs = tmp_path / "docs" / "benchmarks.md"
    monkeypatch.setattr(bench_cli, "DEFAULT_DOC", docs)
    monkeypatch.setattr(table1, "DEFAULT_DOC", docs)
    out = tmp_path / "t1"
    assert main(["bench", "table1", "--system", "quadrotor", "--quick", "--out", str(out)]) == 0
    assert "quadrotor: **failed**" in (out / "table1.md").read_text() and not docs.exists()
    assert main(["bench", "table1", "--system", "quadrotor", "--quick", "--out", str(out), "--update-docs"]) == 0
    assert "## Table 1 — quadrotor" in docs.read_text() and "--update-docs" in docs.read_text()
    other = tmp_path / "mine.md"
    assert main(["bench", "table1", "--system", "quadrotor", "--quick", "--out", str(out), "--doc", str(other)]) == 0
    assert "## Table 1 — quadrotor" in other.read_text()


def _fake_result(scale: float) -> dict:
    """What `run_system` returns, reduced to what the figures read: 2 OOD systems × 3 horizon steps."""
    import numpy as np

    def row(mse):
        return {"errors": np.full((2, 3), mse), "id_errors": np.full((2, 3), mse / 2), "params": 10,
                "latency_ms": 0.1, "train_s": 4.0 * scale, "preds": np.zeros((2, 3, 1))}
    return {"models": {"metasym": row(0.01 * scale), "hold_last": row(0.04), "dhnn": row(0.02)},
            "symplectic_error": 1e-16, "decoder_eps": 0.5, "simulator": {"ms": 1.0, "what": "x"}}


def test_several_training_seeds_merge_into_one_table():
    """`--seeds N`: every row's errors are stacked over seeds (the table's mean is over seeds and systems), each
    seed's OOD mean and their spread are figures, and a bad count is a one-line error."""
    from metasym_core.bench.table1 import merge_seeds, system_figures
    merged = merge_seeds([_fake_result(1.0), _fake_result(3.0)])
    assert merged["models"]["metasym"]["errors"].shape == (4, 3)
    fig = system_figures("quadrotor", merged)
    assert fig["quadrotor_metasym_ood_mse"] == pytest.approx(0.02)  # (0.01 + 0.03) / 2
    assert fig["quadrotor_metasym_ood_mse_seed0"] == pytest.approx(0.01)
    assert fig["quadrotor_metasym_ood_mse_seed1"] == pytest.approx(0.03)
    assert fig["quadrotor_metasym_ood_mse_seed_std"] == pytest.approx(0.01)
    assert fig["quadrotor_metasym_skill"] == pytest.approx(0.5) and fig["quadrotor_metasym_train_s"] == 8.0
    single = system_figures("quadrotor", merge_seeds([_fake_result(1.0)]))
    assert "quadrotor_metasym_ood_mse_seed0" not in single and single["quadrotor_metasym_ood_mse"] == 0.01
    with pytest.raises(MetaSymError, match="--seeds must be a positive integer"):
        run_table1_bench(["quadrotor"], quick=True, doc=None, seeds=0)


def test_the_noise_free_signal_score_keeps_each_seed_and_ratios():
    """Against the quantum record's noise-free mean: each seed's figure, the mean over seeds, and MetaSym's ratio to
    every row (issue 17's quantum criterion) are figures."""
    from metasym_core.bench.table1 import merge_seeds, system_figures

    def with_signal(scale: float, signal: dict[str, float]) -> dict:
        res = _fake_result(scale)
        for key, value in signal.items():
            res["models"][key]["signal_mse"] = {"mean": value, "std": 0.0}
        return res
    merged = merge_seeds([with_signal(1.0, {"metasym": 0.05, "hold_last": 30.0, "dhnn": 0.06}),
                          with_signal(3.0, {"metasym": 0.07, "hold_last": 30.0, "dhnn": 0.05})])
    fig = system_figures("quantum", merged)
    assert fig["quantum_metasym_ood_mse_vs_mean_signal"] == pytest.approx(0.06)
    assert (fig["quantum_metasym_ood_mse_vs_mean_signal_seed0"], fig["quantum_metasym_ood_mse_vs_mean_signal_seed1"]
            ) == (0.05, 0.07)
    assert fig["quantum_metasym_over_dhnn_vs_mean_signal"] == pytest.approx(0.06 / 0.055)
    assert fig["quantum_metasym_over_hold_last_vs_mean_signal"] == pytest.approx(0.002)
