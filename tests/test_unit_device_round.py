"""run_device_round called directly (no Ray, no Flower): the memory, deadline and fault branches.

A float MLP on the embedded digits data, 4 devices, device 0 (366 training samples). The scenario
changes only the device's hardware (custom ``[devices.custom.<name>]`` profiles) and its policies; the
instruction carries the profile, the deadline and the injected fault, as the server sends them.
Expected batch sizes and step counts are worked out from the documented formulas of
``fleet/hardware/memory.py`` and ``fleet/hardware/clock.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from torch import nn

from fleet import protocol as P
from fleet.arrays import record_from_numpy
from fleet.config.scenario import ScenarioConfig, parse_config
from fleet.data.splits import device_data, fleet_data
from fleet.device import DeviceRound, run_device_round
from fleet.hardware.faults import InjectedCrash
from fleet.hardware.flops import model_flops
from fleet.hardware.memory import estimate_peak_memory
from fleet.model.architectures import build_model
from fleet.model.assembly import state_arrays, trainable_model
from fleet.model.reference import reference_model
from strategies.guard import check_update, delta_norm

BASE = {"federation.num-devices": 4, "federation.devices-per-round": 2, "federation.seed": 0,
        "data.dataset": "digits", "model.arch": "mlp", "model.pretrain-epochs": 1, "train.batch-size": 16,
        "quant.weight-bits": 32, "quant.act-bits": 32, "quant.codec": "fp32", "coreset.method": "full",
        "train.clc-beta": 0.0}
DEVICE = 0
MIB = 2**20


@dataclass(frozen=True)
class Fleet:
    reference: nn.Module  # the frozen float reference (also the template of the device's model)
    ref_hash: str
    global_arrays: dict[str, np.ndarray]
    downlink: int  # bytes of the train message's arrays, as the ClientApp counts them
    local_size: int  # device 0's training samples


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # A private reference cache: pretrained here (1 epoch on the public split), never read from ~/.cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEFLEET_CACHE", str(tmp_path_factory.mktemp("cache")))
        cfg = parse_config(BASE)
        reference, ref_hash, _ = reference_model(cfg, fleet_data(cfg))
        glob = state_arrays(trainable_model(cfg, reference, 32, 32))
        yield Fleet(reference, ref_hash, glob, record_from_numpy(glob).count_bytes(),
                    len(device_data(cfg, DEVICE).y))


def _cfg(**over: object) -> ScenarioConfig:
    return parse_config({**BASE, **{k.replace("__", "."): v for k, v in over.items()}})


def _run(fleet: Fleet, cfg: ScenarioConfig, profile: str = "rpi4", **ins: object) -> DeviceRound:
    """One round of device 0, as the ClientApp runs it: instruction, global arrays, reference, empty state."""
    instruction = P.DeviceInstruction(server_round=1, device=DEVICE, profile=profile, weight_bits=32, act_bits=32,
                                      participation=0, ref_hash=fleet.ref_hash, **ins)  # type: ignore[arg-type]
    return run_device_round(cfg, instruction, dict(fleet.global_arrays), fleet.reference, {}, fleet.downlink)


def _changed(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    return [k for k in a if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k], equal_nan=True)]


def test_control_round_trains_on_all_local_data(fleet: Fleet) -> None:
    # Execute: rpi4, no deadline, no fault
    out = _run(fleet, _cfg())

    # Assert: ok, one epoch of 366 samples at batch 16, an fp32 update on the global keys
    rep = out.report
    assert rep.status == "ok" and rep.error == ""
    assert rep.local_size == fleet.local_size == 366
    assert rep.batch_size == 16 and rep.train_samples == 366
    assert set(out.payload) == set(fleet.global_arrays) and _changed(out.payload, fleet.global_arrays)
    assert rep.uplink_bytes == 4 * sum(v.size for v in fleet.global_arrays.values())


# -- memory -------------------------------------------------------------------------------------------

def _budget_between_batch_8_and_9(fleet: Fleet) -> tuple[float, float, float]:
    """A budget (MiB) that batch 8 fits and batch 9 does not; with the estimates at batch 8 and 16 (MiB)."""
    ds = fleet_data(_cfg()).dataset
    model = build_model("mlp", ds.in_shape, ds.num_classes)

    def est(b: int) -> float:  # the scenario's trainer: adam (momentum unused), float, no teacher
        return estimate_peak_memory(model, ds.in_shape, b, optimizer="adam", momentum=0.9).total_bytes / MIB

    return (est(8) + est(9)) / 2, est(8), est(16)


def _small(budget_mb: float, policy: str) -> ScenarioConfig:
    return _cfg(**{"devices.custom.small.base": "rpi4", "devices.custom.small.memory_mb": budget_mb,
                   "devices.profiles.small": 1.0, "devices.memory-policy": policy})


def test_over_the_memory_budget_policy_fail_reports_oom(fleet: Fleet) -> None:
    # Prepare: batch 16 needs more than the profile's budget
    budget, _, need16 = _budget_between_batch_8_and_9(fleet)
    assert need16 > budget

    # Execute
    out = _run(fleet, _small(budget, "fail"), profile="small")

    # Assert: an OOM with the need and the budget in its message; nothing trained, nothing uploaded
    rep = out.report
    assert rep.status == "oom"
    assert f"needs {need16:.1f} MB" in rep.error and f"budget {budget:g} MB" in rep.error, rep.error
    assert rep.peak_mem_mb == pytest.approx(need16)
    assert out.payload == {} and rep.train_samples == 0 and rep.uplink_bytes == 0


def test_over_the_memory_budget_policy_shrink_batch_trains_with_the_largest_fitting_batch(fleet: Fleet) -> None:
    # Prepare
    budget, need8, _ = _budget_between_batch_8_and_9(fleet)

    # Execute
    out = _run(fleet, _small(budget, "shrink-batch"), profile="small")

    # Assert: batch 8 (9 would not fit), still a full epoch of the local data
    rep = out.report
    assert rep.status == "ok"
    assert rep.batch_size == 8
    assert rep.peak_mem_mb == pytest.approx(need8) and rep.peak_mem_mb <= budget
    assert rep.train_samples == 366 and set(out.payload) == set(fleet.global_arrays)


def test_memory_budget_below_batch_one_is_oom_even_with_shrink_batch(fleet: Fleet) -> None:
    # Prepare: 0.1 MiB is less than the weights alone (17,226 float32 parameters plus Adam's two copies)
    out = _run(fleet, _small(0.1, "shrink-batch"), profile="small")

    # Assert
    assert out.report.status == "oom" and "budget 0.1 MB" in out.report.error and out.payload == {}


# -- deadline -----------------------------------------------------------------------------------------
# A slow device with a (nearly) free radio: 0.001 GFLOP/s, no latency, 1 Tbit/s links.
SLOW = {"devices.custom.slow.base": "rpi4", "devices.custom.slow.gflops": 0.001,
        "devices.custom.slow.latency_ms": 0.0, "devices.custom.slow.uplink_mbps": 1e6,
        "devices.custom.slow.downlink_mbps": 1e6, "devices.profiles.slow": 1.0}


def _full_compute_s(fleet: Fleet) -> float:
    """Compute seconds of the full round on SLOW: flops/sample * 3 passes * 366 samples / 1e9 / 0.001 GFLOP/s."""
    ds = fleet_data(_cfg()).dataset
    flops = model_flops(build_model("mlp", ds.in_shape, ds.num_classes), ds.in_shape)
    return flops * 3 * fleet.local_size / 1e9 / 0.001


def test_missed_deadline_policy_drop_sends_nothing(fleet: Fleet) -> None:
    # Prepare: a deadline of 55% of the round's compute
    deadline = 0.55 * _full_compute_s(fleet)
    cfg = _cfg(**SLOW, **{"devices.straggler-policy": "drop", "devices.deadline-s": deadline})

    # Execute
    out = _run(fleet, cfg, profile="slow", deadline_s=deadline)

    # Assert: a straggler, charged the predicted full round, with no update and no training
    rep = out.report
    assert rep.status == "straggler"
    assert out.payload == {} and rep.train_samples == 0
    assert rep.sim_time_s == pytest.approx(_full_compute_s(fleet), rel=1e-3) and rep.sim_time_s > deadline


def test_missed_deadline_policy_cut_trains_the_share_that_fits(fleet: Fleet) -> None:
    # Prepare: the same deadline; the share of compute that fits is (deadline - comm) / compute ~= 0.55
    full = _full_compute_s(fleet)
    deadline = 0.55 * full
    cfg = _cfg(**SLOW, **{"devices.straggler-policy": "cut", "devices.deadline-s": deadline})
    steps = math.ceil(366 / 16)  # 23 planned steps
    cut = math.floor(0.55 * steps)  # 12 (0.55 * 23 = 12.65: far from an integer, so comm cannot tip it)

    # Execute
    out = _run(fleet, cfg, profile="slow", deadline_s=deadline)

    # Assert: ok, 12 full batches of 16 instead of 23; the charged time fits the deadline
    rep = out.report
    assert rep.status == "ok"
    assert rep.train_samples == cut * 16 == 192
    assert rep.sim_time_s <= deadline
    assert rep.compute_s == pytest.approx(full * 192 / 366, rel=1e-6)
    assert set(out.payload) == set(fleet.global_arrays) and _changed(out.payload, fleet.global_arrays)


def test_cut_device_with_a_scoring_coreset_still_fits_its_deadline(fleet: Fleet) -> None:
    # Prepare: EVS keeps half the data after scoring all 366 samples (a forward pass each)
    cfg = _cfg(**SLOW, **{"devices.straggler-policy": "cut", "coreset.method": "evs", "coreset.fraction": 0.5})
    free = _run(fleet, cfg, profile="slow").report  # no deadline: the round's full simulated time
    assert free.scoring_passes == 366 and free.status == "ok"
    deadline = 0.5 * free.sim_time_s

    # Execute
    rep = _run(fleet, cfg, profile="slow", deadline_s=deadline).report

    # Assert: docs/device-profiles.md: under 'cut' the device "computes for deadline - comm seconds"
    assert rep.status == "ok" and 0 < rep.train_samples < free.train_samples
    assert rep.sim_time_s <= deadline, (rep.sim_time_s, deadline)


def test_a_deadline_that_fits_changes_nothing(fleet: Fleet) -> None:
    # Prepare: twice the full round
    deadline = 2.0 * _full_compute_s(fleet)
    cfg = _cfg(**SLOW, **{"devices.straggler-policy": "drop", "devices.deadline-s": deadline})

    # Execute
    out = _run(fleet, cfg, profile="slow", deadline_s=deadline)

    # Assert
    assert out.report.status == "ok" and out.report.train_samples == 366


# -- injected faults ----------------------------------------------------------------------------------

def test_crash_fault_raises_the_injected_crash(fleet: Fleet) -> None:
    # Execute / Assert: the device dies (Flower turns this into an error reply; the server records "failed")
    with pytest.raises(InjectedCrash, match="injected crash"):
        _run(fleet, _cfg(**{"faults.crash": 0.5}), fault="crash")


@pytest.mark.parametrize("form", ["nan", "shape", "norm"])
def test_corrupt_fault_corrupts_the_largest_tensor_of_the_update(fleet: Fleet, form: str) -> None:
    # Prepare: the same device-round without a fault, as the control
    cfg = _cfg(**{"faults.corrupt": 0.5, "faults.corrupt-form": form})
    clean = _run(fleet, cfg).payload

    # Execute
    out = _run(fleet, cfg, fault="corrupt")

    # Assert: the device does not know (it reports ok); exactly one of the largest tensors differs
    assert out.report.status == "ok" and out.report.fault == "corrupt"
    bad = _changed(out.payload, clean)
    biggest = max(v.size for v in clean.values())
    assert len(bad) == 1 and clean[bad[0]].size == biggest, bad
    k = bad[0]
    got, ref = out.payload[k], clean[k]
    if form == "nan":
        finite = np.isfinite(got)
        assert got.shape == ref.shape and 1 <= int((~finite).sum()) <= 2
        assert np.array_equal(got[finite], ref[finite])
        assert check_update(out.payload, fleet.global_arrays).startswith(f"'{k}': ")
    elif form == "shape":
        assert got.shape == (ref.size - 1,) and np.array_equal(got, ref.reshape(-1)[:-1])
        assert check_update(out.payload, fleet.global_arrays) == f"'{k}': shape {got.shape} != expected {ref.shape}"
    else:
        assert got.shape == ref.shape and check_update(out.payload, fleet.global_arrays) is None
        # only the round's norm test can catch it: far beyond 10x an honest update's delta norm
        assert delta_norm(out.payload, fleet.global_arrays) > 100 * delta_norm(clean, fleet.global_arrays)


def test_stale_fault_sends_back_the_received_model(fleet: Fleet) -> None:
    # Prepare
    cfg = _cfg(**{"faults.stale": 0.5})
    clean = _run(fleet, cfg).payload

    # Execute
    out = _run(fleet, cfg, fault="stale")

    # Assert: it trained (and reports so) but uploads the global arrays unchanged, unlike the control
    assert out.report.status == "ok" and out.report.train_samples == 366
    assert set(out.payload) == set(fleet.global_arrays)
    assert _changed(out.payload, fleet.global_arrays) == []
    assert _changed(clean, fleet.global_arrays)
