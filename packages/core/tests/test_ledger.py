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
