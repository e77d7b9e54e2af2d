"""The imc_limits experiment: presets, config checks, and the small preset's tables and claims."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from jaxrob.cli import RunContext


def test_presets_validate_and_paper_figures():
    from experiments import imc_limits as e
    for config in e.PRESETS.values():
        config.validate()
    assert e.PRESETS["small"].n_rows == e.PRESETS["paper"].n_rows == e.PAPER["rows"] == 512
    assert e.PAPER["qs_energy_ratio_per_6db"] == 3.3 and e.PAPER["qs_headroom_n_ratio_per_3db"] == 2.0
    assert len(e.PRESETS["paper"].snr_db) > len(e.PRESETS["small"].snr_db)


@pytest.mark.parametrize("bad,msg", [
    (dict(n_rows=0), "n_rows"), (dict(bx=0), "bx"), (dict(bw=17), "bw"), (dict(snr_db=()), "snr_db"),
    (dict(snr_db=(10.0, float("nan"))), "snr_db"), (dict(n_values=(1024,)), "n_values"),
    (dict(n_values=(3.5,)), "n_values"), (dict(headroom_snr_db=(200.0,)), "headroom_snr_db"),
    (dict(loss_db=0.0), "loss_db"), (dict(qr_c_unit=-1.0), "qr_c_unit"), (dict(ratio_step_db=0.0), "ratio_step_db"),
])
def test_bad_configs_raise(bad, msg):
    from experiments import imc_limits as e
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(e.PRESETS["small"], **bad).validate()


def test_small_run_tables_and_claims(tmp_path):
    from experiments import imc_limits as e
    ctx = RunContext(run_dir=tmp_path, resume=False, progress=False, log=logging.getLogger("imc_limits"))
    res = e.run(e.PRESETS["small"], ctx)
    text = (tmp_path / "results.md").read_text()
    for heading in ("Paper's 512-row figures beside ours", "Compute SNR vs energy", "ADC bits from MPC",
                    "Voltage-headroom bound"):
        assert heading in text
    assert "3.3x" in text and "| 2x |" in text
    se = res["snr_energy"]
    # QS cheapest (analog energy) at the lowest target, QR at the highest; QS unreachable above its floor.
    assert se["preferred_core"][0] == "QS" and se["preferred_core"][-1] == "QR"
    assert se["qs"]["energy_core_fj"][-1] is None and se["qr"]["energy_core_fj"][-1] is not None
    assert res["crossover_db"] is not None and res["crossover_db"] < res["qs_ratio"]["floor_db"] + 1e-6
    # MPC: far fewer bits than lossless, SNR_T within ~the allowed loss of SNR_a where input quantization is negligible.
    mp = res["mpc"]
    for i, n in enumerate(mp["n"]):
        assert mp["qs"]["mpc_bits"][i] < mp["full_bits"][i]
        assert mp["qs"]["snr_a_db"][i] - mp["qs"]["snr_t_db"][i] < 0.5 + 0.3
    # The paper's trends as our model reproduces them.
    assert res["headroom_ratio_no_mismatch"] == pytest.approx(10 ** 0.3, rel=1e-3)
    assert res["qs_ratio"]["snr_db_at_paper_ratio"] is not None
    assert res["qs_ratio"]["ratio_min"] == pytest.approx(2.0, abs=0.05)
    assert res["seconds"] < 30
