"""The sosa_granularity experiment: presets, config checks, and the small preset's tables and claims."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from jaxrob.cli import RunContext


def test_presets_validate():
    from experiments import sosa_granularity as e
    for config in e.PRESETS.values():
        config.validate()
    assert e.PAPER["effective_tops"] == 600.0 and e.PAPER["best_interconnect_many_pods"] == "butterfly"
    assert max(e.PRESETS["paper"].scaling_pods) > max(e.PRESETS["small"].scaling_pods)


@pytest.mark.parametrize("bad,err,msg", [
    (dict(total_pes=0), ValueError, "total_pes"), (dict(pod_sizes=(24,)), ValueError, "pod_sizes"),
    (dict(pod_sizes=()), ValueError, "pod_sizes"), (dict(scaling_pods=(0,)), ValueError, "scaling_pods"),
    (dict(batch=0), ValueError, "batch"), (dict(frequency_hz=0.0), ValueError, "frequency_hz"),
    (dict(interconnects=("ring",)), ValueError, "interconnects"), (dict(overlap=1), TypeError, "overlap"),
])
def test_bad_configs_raise(bad, err, msg):
    from experiments import sosa_granularity as e
    with pytest.raises(err, match=msg):
        dataclasses.replace(e.PRESETS["small"], **bad).validate()


def test_small_run_tables_and_claims(tmp_path):
    from experiments import sosa_granularity as e
    from jaxrob.hw._multipod import multipod_cost
    from jaxrob.hw._workload import resnet50
    config = e.PRESETS["small"]
    ctx = RunContext(run_dir=tmp_path, resume=False, progress=False, log=logging.getLogger("sosa_granularity"))
    res = e.run(config, ctx)
    text = (tmp_path / "results.md").read_text()
    for heading in ("Paper's claims beside ours", "pod size at a fixed budget", "Scaling with pod count"):
        assert heading in text
    # The vmapped sweep agrees with a direct call of the cost model at one design point.
    g = res["granularity"]["resnet50"]
    i = g["rows"].index(32)
    direct = multipod_cost(resnet50()[0], 32, 32, g["pods"][i], interconnect="butterfly", partition_m=32,
                           partition_n=32, overlap=config.overlap)
    assert g["butterfly"]["tops_per_w"][i] == pytest.approx(float(direct.effective_throughput_per_watt) / 1e12,
                                                            rel=1e-4)
    for name in e.WORKLOADS:
        for kind in config.interconnects:
            u = np.asarray(res["granularity"][name][kind]["utilization"])
            assert np.all((u > 0) & (u <= 1 + 1e-6))
            # One pod has no network: every interconnect gives the same cost there.
            assert res["scaling"][name][kind]["tops_per_w"][0] == pytest.approx(
                res["scaling"][name]["crossbar"]["tops_per_w"][0], rel=1e-6)
    claims = res["claims"]
    # The paper's claims our model reproduces: small pods for the CNNs, butterfly at many pods.
    assert claims["best_pod"]["resnet50"]["smaller_than_commercial"]
    assert claims["best_pod"]["mobilenet_v2"]["smaller_than_commercial"]
    assert set(claims["best_many_pods"].values()) == {"butterfly"}
    assert claims["paper_scale"]["peak_tops"] == pytest.approx(2 * 512 * 32 * 32 * 1e9 / 1e12)
    assert res["seconds"] < 60
