"""Checkpoints: round trip, truncated files, crash-safe saving, mismatches."""

import pytest
import torch
from _models import random_model

from metasym_core import MetaSymError, load_checkpoint, save_checkpoint
from metasym_core.checkpoint import read_checkpoint


def test_round_trip(tmp_path, model64):
    path = save_checkpoint(tmp_path / "m.pt", model64, extra={"step": 7, "losses": [1.0, 0.5]})
    loaded, extra = load_checkpoint(path)
    assert extra == {"step": 7, "losses": [1.0, 0.5]}
    x, u = torch.randn(2, 10, 12, dtype=torch.float64), torch.randn(2, 10, 4, dtype=torch.float64)
    assert torch.equal(loaded.eval().rollout(x, u, 0.01, 5), model64.rollout(x, u, 0.01, 5))
    assert list(tmp_path.iterdir()) == [path]


def test_truncated_file_is_a_clear_error(tmp_path, model64):
    path = save_checkpoint(tmp_path / "m.pt", model64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MetaSymError, match="unreadable"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(MetaSymError, match="unreadable"):
        load_checkpoint(path)
    with pytest.raises(MetaSymError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_crash_during_save_keeps_previous_file(tmp_path, model64, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", model64)
    before = path.read_bytes()

    def exploding_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, random_model(seed=5))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_shape_and_version_mismatch(tmp_path, model64):
    path = save_checkpoint(tmp_path / "m.pt", model64)
    payload = read_checkpoint(path)
    payload["state_dict"]["decoder.head.2.weight"] = torch.zeros(3, 3, dtype=torch.float64)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(MetaSymError, match=r"decoder.head.2.weight has shape \[3, 3\]"):
        load_checkpoint(tmp_path / "bad.pt")
    payload = read_checkpoint(path)
    payload["version"] = 99
    torch.save(payload, tmp_path / "v.pt")
    with pytest.raises(MetaSymError, match="format version 99"):
        load_checkpoint(tmp_path / "v.pt")


def test_data_section_of_the_configs():
    from metasym_core.config import data_options, data_tag, load_config
    from metasym_core.systems.quadrotor.flight import FLIGHT_REVISION

    assert data_tag({"source": "flight"}) == f"_flight-r{FLIGHT_REVISION}" and data_tag({}) == ""
    assert data_tag({"source": "flight", "fixed": ["mass", "arm"]}) == f"_flight-r{FLIGHT_REVISION}_fixed-mass+arm"

    assert data_options(load_config("quadrotor")) == ({"source": "flight"}, 750)
    assert data_options(load_config("spring_mesh")) == ({}, None)  # no section: the family defaults
    for section, needle in (({"steps": 0}, "data.steps"), ({"family": "flight"}, "data.family"),
                            ({"seed": 1}, "unknown data keys"), ("flight", "must be a mapping")):
        with pytest.raises(MetaSymError, match=needle):
            data_options({"data": section, "_path": "x.yaml"})


def test_checkpoint_without_encoder_shift_loads_as_uncentred(tmp_path, model64):
    """Checkpoints written before the encoder's centring buffer existed load with a zero shift,
    i.e. the uncentred encoder they were trained with; a saved non-zero shift round-trips."""
    with torch.no_grad():
        model64.encoder.shift.copy_(torch.linspace(-2.0, 3.0, 12, dtype=torch.float64))
    path = save_checkpoint(tmp_path / "m.pt", model64)
    assert torch.equal(load_checkpoint(path)[0].encoder.shift, model64.encoder.shift)
    payload = read_checkpoint(path)
    del payload["state_dict"]["encoder.shift"]
    torch.save(payload, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")[0]
    assert old.encoder.shift.dtype == torch.float64 and not old.encoder.shift.any()
    x = torch.randn(3, 12, dtype=torch.float64)
    with torch.no_grad():
        model64.encoder.shift.zero_()
        assert torch.equal(old.encoder(x, 0.1), model64.encoder(x, 0.1))
