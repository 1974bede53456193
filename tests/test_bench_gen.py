"""The order in which the benchmark's clients register (bench.gen)."""

from __future__ import annotations

from bench.gen import registration_phases, worker_plans


def test_senders_first_then_the_samples_spread_through_the_receivers() -> None:
    phases = registration_phases(100, 10, 8, "b")
    order = [spec for phase in phases for spec in phase]
    assert sorted(index for index, *_ in order) == list(range(100)), "each client once"
    assert [spec[3] for spec in order[:10]] == [True] * 10, "the senders come first"
    samples = [pos for pos, spec in enumerate(order) if spec[2]]
    assert [order[pos][1] for pos in samples] == [f"b{i}" for i in range(10, 18)]
    # one in the middle of each eighth of the 82 bulk receivers
    assert samples == [15, 26, 37, 48, 60, 71, 82, 93]
    # each sample registers alone, after the receivers before it have
    assert all(len(phases[1 + 2 * k + 1]) == 1 for k in range(8))


def test_without_samples_everyone_registers_at_once() -> None:
    phases = registration_phases(500, 0, 0, "i")
    assert len(phases) == 1 and len(phases[0]) == 500


def test_more_samples_than_receivers() -> None:
    order = [spec for phase in registration_phases(3, 2, 8, "q") for spec in phase]
    assert [(index, sample, sender) for index, _, sample, sender in order] == [
        (0, False, True), (1, False, True), (2, True, False)]


def test_each_worker_gets_its_kind_and_the_bulk_is_shared() -> None:
    phases = registration_phases(40, 4, 2, "w")
    plans = [worker_plans(phase, 4) for phase in phases]
    assert [spec[1] for spec in plans[0][0]] == ["w0", "w1", "w2", "w3"]
    assert all(not plan[0] and not plan[1] for plan in plans[1::2]), "bulk phases"
    assert [plan[1][0][1] for plan in plans[2::2][:2]] == ["w4", "w5"], "one sample each"
    bulk = [spec for plan in plans for worker in plan[2:] for spec in worker]
    assert len(bulk) == 34
    assert all(spec in plan[2 + spec[0] % 2] for plan in plans for spec in plan[2] + plan[3])
    assert {len(plan[2]) - len(plan[3]) for plan in plans[1::2]} <= {-1, 0, 1}
