"""`sathmr assets synthetic` and `sathmr assets check` through click's CliRunner."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from sathmr.body.cli import assets


def test_synthetic_then_check_passes(tmp_path):
    runner = CliRunner()
    res = runner.invoke(assets, ["synthetic", "-o", str(tmp_path), "--size", "tiny"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "SMPL_NEUTRAL.pkl").is_file()
    res = runner.invoke(assets, ["check", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines() if line.strip()}
    for name in ("SMPL_NEUTRAL.pkl", "SMPL_MALE.pkl", "smpl_mean_params.npz", "J_regressor_h36m_correct.npy"):
        assert " OK " in lines[name], lines[name]
    assert "synthetic stand-in" in res.output


def test_check_fails_clearly_on_empty_folder(tmp_path):
    res = CliRunner().invoke(assets, ["check", str(tmp_path)])
    assert res.exit_code != 0
    assert "SMPL_NEUTRAL.pkl/.npz" in res.output and "missing" in res.output
    assert "smpl.is.tue.mpg.de" in res.output
    assert "required file(s) missing or broken" in res.output


def test_check_reports_malformed_mean_params_and_optional_files(tmp_path):
    runner = CliRunner()
    assert runner.invoke(assets, ["synthetic", "-o", str(tmp_path), "--size", "tiny"]).exit_code == 0
    np.savez(tmp_path / "smpl_mean_params.npz", pose=np.zeros(72), shape=np.zeros(10))
    (tmp_path / "body_verts_smpl.npy").unlink()
    res = runner.invoke(assets, ["check", str(tmp_path)])
    assert res.exit_code != 0
    row = next(line for line in res.output.splitlines() if line.startswith("smpl_mean_params.npz"))
    assert "malformed" in row and "144" in row
    row = next(line for line in res.output.splitlines() if line.startswith("body_verts_smpl.npy"))
    assert "missing" in row and "optional" in row


def test_optional_files_missing_still_passes(tmp_path):
    runner = CliRunner()
    assert runner.invoke(assets, ["synthetic", "-o", str(tmp_path), "--size", "tiny"]).exit_code == 0
    for name in ("SMPL_MALE.pkl", "SMPL_FEMALE.pkl", "J_regressor_h36m_correct.npy"):
        (tmp_path / name).unlink()
    res = runner.invoke(assets, ["check", str(tmp_path)])
    assert res.exit_code == 0, res.output


def test_synthetic_rejects_unknown_size(tmp_path):
    res = CliRunner().invoke(assets, ["synthetic", "-o", str(tmp_path), "--size", "huge"])
    assert res.exit_code != 0 and "huge" in res.output


def test_synthetic_does_not_clobber_real_files(tmp_path):
    real = tmp_path / "SMPL_NEUTRAL.pkl"
    real.write_bytes(b"licensed bytes")
    runner = CliRunner()
    res = runner.invoke(assets, ["synthetic", "-o", str(tmp_path), "--size", "tiny"])
    assert res.exit_code != 0 and "refusing to overwrite" in res.output
    assert real.read_bytes() == b"licensed bytes"
    res = runner.invoke(assets, ["synthetic", "-o", str(tmp_path), "--size", "tiny", "--force"])
    assert res.exit_code == 0 and real.read_bytes() != b"licensed bytes"
    # A synthetic folder can be regenerated in place without --force.
    assert runner.invoke(assets, ["synthetic", "-o", str(tmp_path), "--size", "tiny"]).exit_code == 0
