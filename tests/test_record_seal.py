"""Model-file records are reused only with this user's seal (``zoo_core.runs.record_seal``), in-process.

Before, a record whose fingerprint and sha256 agreed with its file was trusted: a planted export (other weights,
its record's sha256 recomputed) was reused silently and the run scored other weights (attacker audit 4).
"""
from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from tests.test_om_record import _ctx, _om_for
from zoo_core.api.errors import ConfigError, ZooError
from zoo_core.runs import record_seal
from zoo_core.runs.fingerprint import sha256_file


@pytest.fixture
def own_key(tmp_path, monkeypatch):
    """A cache dir (so a key) of this test's own."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ZOO_CACHE_DIR", str(cache))
    return cache / record_seal.KEY_NAME


def _export(fixture_cfg, root, **over) -> Path:
    from zoo_core.runs.model_files import ensure_onnx

    return ensure_onnx(_ctx(fixture_cfg, root, "eval", **over), "onnxruntime")


def _conv_weight(onnx_file: Path) -> float:
    """The fixture graph's slope (``model.sharpness``, 20 for the weights this run names)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_file))
    return float(next(numpy_helper.to_array(t) for t in m.graph.initializer if t.dims == [1, 1, 1, 1]).ravel()[0])


@pytest.mark.needs_torch
def test_a_planted_export_with_a_consistent_forged_record_is_rebuilt(fixture_cfg, tmp_path, own_key, caplog):
    """The audit's scenario: other weights copied over the export, the record's sha256 set to the new bytes.
    Before: 'reusing ... unchanged' and the run scored the planted model."""
    other = _export(fixture_cfg, tmp_path / "other", **{"model.sharpness": 5.0})  # the attacker's model
    out = _export(fixture_cfg, tmp_path)
    genuine = out.read_bytes()
    assert _conv_weight(out) == 20.0
    meta = out.with_suffix(".json")
    rec = json.loads(meta.read_text())
    out.write_bytes(other.read_bytes())
    rec["sha256"] = sha256_file(out)
    meta.write_text(json.dumps(rec))
    with caplog.at_level(logging.INFO, logger="zoo"):
        assert _export(fixture_cfg, tmp_path) == out
    assert "reusing" not in caplog.text
    assert f"its record {meta} was not written by this user's zoo (its seal does not match: the record was edited" in caplog.text
    assert _conv_weight(out) == 20.0 and out.read_bytes() == genuine  # the model the weights make, not the plant
    assert record_seal.seal_problem(json.loads(meta.read_text())) is None


@pytest.mark.needs_torch
def test_a_sealed_export_is_reused_and_any_edited_field_rebuilds_it(fixture_cfg, tmp_path, own_key, caplog):
    out = _export(fixture_cfg, tmp_path)
    meta = out.with_suffix(".json")
    rec = json.loads(meta.read_text())
    assert set(rec) >= {"fingerprint", "sha256", "seal"} and len(rec["seal"]) == 64
    assert stat.S_IMODE(own_key.stat().st_mode) == 0o600
    mtime = out.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="zoo"):
        _export(fixture_cfg, tmp_path)
    assert f"reusing {out}" in caplog.text and out.stat().st_mtime_ns == mtime
    caplog.clear()
    meta.write_text(json.dumps({**rec, "weights_file": "/elsewhere.pt"}))  # one field edited, seal kept
    with caplog.at_level(logging.INFO, logger="zoo"):
        _export(fixture_cfg, tmp_path)
    assert "reusing" not in caplog.text and "its seal does not match" in caplog.text
    caplog.clear()
    meta.write_text(json.dumps({k: v for k, v in rec.items() if k != "seal"}))  # an older zoo's record
    with caplog.at_level(logging.INFO, logger="zoo"):
        _export(fixture_cfg, tmp_path)
    assert "reusing" not in caplog.text and "(it has no seal: written by an older zoo" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zoo"):  # rebuilt once: sealed now
        _export(fixture_cfg, tmp_path)
    assert f"reusing {out}" in caplog.text


@pytest.mark.needs_torch
def test_another_users_key_does_not_vouch_for_a_record(fixture_cfg, tmp_path, own_key, monkeypatch, caplog):
    """A run dir shared between accounts: the other account's zoo rebuilds (its own key), never reuses."""
    out = _export(fixture_cfg, tmp_path)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "other_user_cache"))
    with caplog.at_level(logging.INFO, logger="zoo"):
        _export(fixture_cfg, tmp_path)
    assert "reusing" not in caplog.text and "written by another user's zoo" in caplog.text
    assert record_seal.seal_problem(json.loads(out.with_suffix(".json").read_text())) is None  # sealed anew


def test_reusable_record_needs_the_seal(tmp_path, own_key, caplog):
    """The INT8 and AMCT records go through ``reusable_record``."""
    from zoo_core.api.atomic import write_json
    from zoo_core.runs.model_files import reusable_record

    out = tmp_path / "m_onnxruntime_int8.onnx"
    out.write_bytes(b"int8 model")
    fp = {"quantize": {"seed": 0}, "source_sha256": "ab" * 32}
    write_json(out.with_suffix(".json"), record_seal.sealed({"fingerprint": fp, "sha256": sha256_file(out)}))
    assert reusable_record(out, fp, "quantization") is not None
    out.write_bytes(b"planted model")
    write_json(out.with_suffix(".json"), {"fingerprint": fp, "sha256": sha256_file(out)})
    with caplog.at_level(logging.INFO, logger="zoo"):
        assert reusable_record(out, fp, "quantization") is None
    assert "rebuilding m_onnxruntime_int8.onnx: its record" in caplog.text and "it has no seal" in caplog.text


@pytest.mark.needs_torch
def test_an_int8_model_with_a_forged_record_is_rebuilt(fixture_cfg, tmp_path, own_key, caplog):
    from zoo_core.quantize.onnxruntime_int8 import ensure_int8_onnx

    q = {"quantize.name": "int8", "quantize.calibration_images": 2}
    pin = ensure_int8_onnx(_ctx(fixture_cfg, tmp_path, "eval", **q))
    out = tmp_path / "model" / pin.name
    genuine = out.read_bytes()
    rec = json.loads(out.with_suffix(".json").read_text())
    assert record_seal.seal_problem(rec) is None
    os.unlink(out)
    out.write_bytes(genuine + b"\0")  # another model, its sha256 put into the record
    out.with_suffix(".json").write_text(json.dumps({**rec, "sha256": sha256_file(out)}))
    with caplog.at_level(logging.INFO, logger="zoo"):
        pin = ensure_int8_onnx(_ctx(fixture_cfg, tmp_path, "eval", **q))
    assert "its seal does not match" in caplog.text
    assert out.read_bytes() == genuine and pin.read_bytes() == genuine


@pytest.mark.needs_torch
def test_an_om_record_without_a_valid_seal_vouches_for_nothing(fixture_cfg, tmp_path, own_key, monkeypatch,
                                                               fixtures_dir, caplog):
    from tests.test_om_record import _convert

    monkeypatch.setenv("PATH", f"{fixtures_dir / 'fake_ascend'}{os.pathsep}{os.environ['PATH']}")
    _convert(fixture_cfg, tmp_path)
    meta = tmp_path / "model" / "fixture_bs1.json"
    rec = json.loads(meta.read_text())
    caplog.clear()  # the convert's INFO lines, kept when an earlier in-process run left the zoo logger at INFO
    with caplog.at_level(logging.WARNING, logger="zoo"):
        assert _om_for(fixture_cfg, tmp_path).name == "fixture_bs1.om"
    assert caplog.text == ""  # sealed: no warning
    om = tmp_path / "model" / "fixture_bs1.om"
    om.write_bytes(b"another OM")
    meta.write_text(json.dumps({**rec, "sha256": sha256_file(om)}))  # forged to agree with it
    with caplog.at_level(logging.WARNING, logger="zoo"):
        assert _om_for(fixture_cfg, tmp_path) == om  # atc is needed to rebuild: loaded, but not silently
    assert f"convert record {meta} was not written by this user's zoo (its seal does not match" in caplog.text
    assert "loaded as it is, like an OM without a record" in caplog.text
    # what an unsealed record says can still refuse the OM (e.g. an older zoo's record of other settings)
    rec["settings"]["model_config"] = {"model.sharpness": 5.0}
    meta.write_text(json.dumps({k: v for k, v in rec.items() if k != "seal"}))
    with pytest.raises(ConfigError, match="converted with other settings"):
        _om_for(fixture_cfg, tmp_path)


def test_the_key_is_made_once_0600_and_shared_by_the_users_runs(own_key):
    assert not own_key.exists()
    a = record_seal.sealed({"sha256": "x", "fingerprint": {"b": 1, "a": [1, 2]}})
    assert stat.S_IMODE(own_key.stat().st_mode) == 0o600 and own_key.stat().st_size == 32
    key = own_key.read_bytes()
    b = record_seal.sealed({"fingerprint": {"a": [1, 2], "b": 1}, "sha256": "x"})  # key order is not content
    assert a["seal"] == b["seal"] and own_key.read_bytes() == key
    assert record_seal.seal_problem(json.loads(json.dumps(a, indent=2))) is None


@pytest.mark.parametrize("bad, reason", [
    ("mode", r"has mode 0644: group or others may read or write it \(it must be 0600\)"),
    ("symlink", "is a symbolic link"),
    ("fifo", "is not a regular file"),
    ("dir", "is not a regular file"),
    ("short", "holds 3 bytes, not the 32 zoo writes"),
    ("owner", r"is owned by uid \d+, not by you"),
])
def test_a_key_file_others_could_read_or_plant_is_refused(own_key, tmp_path, monkeypatch, bad, reason):
    own_key.parent.mkdir(parents=True)
    if bad == "mode":
        own_key.write_bytes(os.urandom(32))
        own_key.chmod(0o644)
    elif bad == "symlink":
        target = tmp_path / "elsewhere.key"
        target.write_bytes(os.urandom(32))
        target.chmod(0o600)
        own_key.symlink_to(target)
    elif bad == "fifo":
        os.mkfifo(own_key, 0o600)  # never opened for a blocking read
    elif bad == "dir":
        own_key.mkdir(mode=0o700)
    elif bad == "short":
        own_key.write_bytes(b"abc")
        own_key.chmod(0o600)
    else:
        own_key.write_bytes(os.urandom(32))
        own_key.chmod(0o600)
        uid = os.getuid()
        monkeypatch.setattr(record_seal.os, "getuid", lambda: uid + 1)
    with pytest.raises(ZooError, match=reason) as exc:
        record_seal.sealed({"sha256": "x"})
    assert exc.value.exit_code == 2 and str(own_key) in str(exc.value)
    assert "remove it and let zoo make a new one" in str(exc.value.hint)


def test_a_seal_survives_the_json_round_trip_of_the_record_writer(tmp_path, own_key):
    from zoo_core.api.atomic import write_json

    rec = record_seal.sealed({"fingerprint": {"t": (1, 2), "f": 0.1 + 0.2, "u": "é"}, "n": None,
                              "sha256": str(np.float64(1.5))})
    write_json(tmp_path / "r.json", rec)
    assert record_seal.seal_problem(json.loads((tmp_path / "r.json").read_text())) is None


@pytest.mark.needs_torch
def test_without_a_writable_cache_dir_records_are_unsealed_and_rebuilt_not_an_error(fixture_cfg, tmp_path,
                                                                                    monkeypatch, caplog):
    """A read-only or full cache dir (no key can be made) must not stop a run: the model is built, its record
    written without a seal, and the next run rebuilds it (said once per process)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(blocker / "cache"))  # (mkdir under a file fails, even for root)
    monkeypatch.setattr(record_seal, "_unmade", None)
    caplog.set_level(logging.INFO, logger="zoo")
    out = _export(fixture_cfg, tmp_path / "run")
    record = json.loads(out.with_suffix(".json").read_text())
    assert "seal" not in record and _conv_weight(out) == 20.0
    assert record_seal.seal_problem(record) == "it has no seal: written by an older zoo, or not by zoo"
    said = f"cannot make the record seal key {blocker / 'cache' / record_seal.KEY_NAME}"
    assert caplog.text.count(said) == 1
    _export(fixture_cfg, tmp_path / "run")
    assert "reusing" not in caplog.text and caplog.text.count(said) == 1
