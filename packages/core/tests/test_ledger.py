"""A node's resource ledger (cluster.node.ledger): pure, no processes."""

from __future__ import annotations

from cluster.node.ledger import ResourceLedger


def test_take_only_what_fits_and_give_it_back() -> None:
    ledger = ResourceLedger({"CPU": 2.0, "accel": 1.0})
    assert ledger.take({"CPU": 1.5})
    assert not ledger.take({"CPU": 1.0})  # 0.5 left: nothing is taken
    assert ledger.available == {"CPU": 0.5, "accel": 1.0}
    assert ledger.take({"CPU": 0.5, "accel": 1.0})
    assert not ledger.fits({"accel": 0.1})
    ledger.give_back({"CPU": 1.5})
    ledger.give_back({"CPU": 0.5, "accel": 1.0})
    assert ledger.available == ledger.total == {"CPU": 2.0, "accel": 1.0}


def test_fractions_add_up_without_float_dust() -> None:
    ledger = ResourceLedger({"CPU": 1.0})
    for _ in range(10):
        assert ledger.take({"CPU": 0.1})
    assert ledger.fits({}) and not ledger.fits({"CPU": 0.1})
    assert ledger.available["CPU"] < 1e-9


def test_a_shape_it_could_never_fit_is_told_apart_from_one_that_must_wait() -> None:
    ledger = ResourceLedger({"CPU": 2.0})
    ledger.take({"CPU": 2.0})
    assert not ledger.fits({"CPU": 1.0}) and ledger.could_ever_fit({"CPU": 1.0})
    assert not ledger.could_ever_fit({"CPU": 3.0}) and not ledger.could_ever_fit({"GPU": 1.0})


def test_a_blocked_holder_lends_its_cpu_and_reclaims_it_on_return() -> None:
    ledger = ResourceLedger({"CPU": 1.0})
    ledger.take({"CPU": 1.0})
    ledger.lend(1.0)  # its task waits in get: another task may run meanwhile
    assert ledger.take({"CPU": 1.0})
    ledger.reclaim(1.0)  # the blocked one runs again: over-committed until one finishes
    assert ledger.available["CPU"] == -1.0
    ledger.give_back({"CPU": 1.0})  # the borrower finishes
    ledger.give_back({"CPU": 1.0}, lent_cpu=0.0)  # the first one finishes
    assert ledger.available == {"CPU": 1.0}


def test_a_lease_returned_while_its_cpu_is_lent_gives_back_only_the_rest() -> None:
    ledger = ResourceLedger({"CPU": 2.0, "mem": 4.0})
    ledger.take({"CPU": 1.0, "mem": 2.0})
    ledger.lend(1.0)
    ledger.give_back({"CPU": 1.0, "mem": 2.0}, lent_cpu=1.0)  # its CPU came back when lent
    assert ledger.available == {"CPU": 2.0, "mem": 4.0}


def test_room_is_a_copy_to_plan_with() -> None:
    ledger = ResourceLedger({"CPU": 2.0})
    room = ledger.room()
    room["CPU"] = 0.0
    assert ledger.available == {"CPU": 2.0}


def test_fractions_of_a_gpu_pack_onto_one_device_and_whole_ones_take_free_devices() -> None:
    ledger = ResourceLedger({"CPU": 4, "GPU": 2})
    halves = [ledger.assign_gpus(0.5) for _ in range(2)]
    assert halves == [["0"], ["0"]]  # the fullest device that still fits: they share one
    assert ledger.assign_gpus(1) == ["1"]
    assert not ledger.can_assign_gpus(1)  # 0 is shared out, 1 is taken
    ledger.release_gpus(["0"], 0.5)
    ledger.release_gpus(["0"], 0.5)
    assert ledger.assign_gpus(1) == ["0"]


def test_two_half_free_devices_do_not_make_a_whole_one() -> None:
    ledger = ResourceLedger({"GPU": 2})
    ledger.gpu_free.update({"0": 0.5, "1": 0.5})
    assert ledger.can_assign_gpus(0.5) and not ledger.can_assign_gpus(1)
    assert not ledger.can_assign_gpus(1.5)  # above 1 only whole numbers


def test_gpu_ids_come_from_cuda_visible_devices_when_given() -> None:
    assert sorted(ResourceLedger({"GPU": 2}, ["3", "5"]).gpu_free) == ["3", "5"]
    assert sorted(ResourceLedger({"GPU": 2}).gpu_free) == ["0", "1"]


def test_a_placement_group_s_resources_come_and_go() -> None:
    ledger = ResourceLedger({"CPU": 4})
    assert ledger.take({"CPU": 2})
    ledger.add({"CPU_group_g": 2, "bundle_group_g": 1000})
    assert ledger.total["CPU_group_g"] == 2 and ledger.available["bundle_group_g"] == 1000
    ledger.remove({"CPU_group_g": 2, "bundle_group_g": 1000})
    ledger.give_back({"CPU": 2})
    assert ledger.total == {"CPU": 4} and ledger.available == {"CPU": 4}
