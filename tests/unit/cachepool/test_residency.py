"""Residency bookkeeping on tiny pools: exact evictions per policy, admission, pins, budgets, the 15-minute window
(resident or not), reload costs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cag.cachepool.core import (
    Eviction,
    ModuleNotResidentError,
    ModuleSpec,
    PoolSettings,
    Residency,
    Tier,
    TierBudgets,
    TierFullError,
)
from cag.cachepool.core.policies import GIB
from cag.errors import InvalidFieldError, Status

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ENGINE, RAM, DISK, ORIGIN = Tier.ENGINE, Tier.HOST_RAM, Tier.LOCAL_DISK, Tier.OBJECT_STORE
# No fixed cost per load unless a test sets one, so that the worked numbers stay round: a load from a tier costs its
# GiB times the default guesses (RAM 250, disk 1000, origin 10 000 ms/GiB).
NO_FIXED = dict.fromkeys(Tier, 0.0)


def minutes(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def pool(
    policy: str = "cost_aware",
    engine_gib: int = 4,
    ram_gib: int = 8,
    disk_gib: int = 16,
    fixed_ms: dict[Tier, float] = NO_FIXED,
) -> Residency:
    budgets = TierBudgets(engine_bytes=engine_gib * GIB, host_ram_bytes=ram_gib * GIB, local_disk_bytes=disk_gib * GIB)
    return Residency(PoolSettings(budgets=budgets, eviction_policy=policy, load_fixed_ms=fixed_ms))


def spec(module_id: str, gib: int, priority: int = 1) -> ModuleSpec:
    return ModuleSpec(module_id=module_id, bytes=gib * GIB, token_count=gib * 100, route_priority=priority)


def evicted(evictions: list[Eviction]) -> list[str]:
    return [e.module_id for e in evictions]


def workload(policy: str) -> Residency:
    """Engine of 4 GiB, full: a (1 GiB, never hit), b (2 GiB, 10 hits, last at 2 min), c (1 GiB, priority 3,
    2 hits, last at 5 min). Reload from the object store: 10 000 ms/GiB.
    Keep values: a 10000·1 = 10000, b 10000·11 = 110000, c 10000·6 = 60000. Recency: a (0), b (2), c (5)."""
    p = pool(policy)
    for module in (spec("a", 1), spec("b", 2), spec("c", 1, priority=3)):
        assert p.admit(module, ENGINE, T0) == []
    for i in range(10):
        p.hit("b", minutes(1 + i / 10))
    p.hit("b", minutes(2))
    p.hit("c", minutes(4))
    p.hit("c", minutes(5))
    return p


def test_cost_aware_evicts_lowest_keep_value_first_exactly() -> None:
    p = workload("cost_aware")
    evictions = p.admit(spec("e", 2), ENGINE, minutes(6))
    assert evictions == [
        Eviction(module_id="a", tier=ENGINE, bytes=GIB),
        Eviction(module_id="c", tier=ENGINE, bytes=GIB),
    ]
    assert p.resident_tiers("b") == (ENGINE,)  # the busiest stays
    assert p.resident_tiers("a") == p.resident_tiers("c") == ()


def test_lru_evicts_least_recently_used_first_exactly() -> None:
    p = workload("lru")
    assert evicted(p.admit(spec("e", 2), ENGINE, minutes(6))) == ["a", "b"]
    assert p.resident_tiers("c") == (ENGINE,)


def three_in_the_engine(policy: str) -> Residency:
    """Engine of 4 GiB, full: x (1 GiB, 3 hits, last at 1 min), y (1 GiB, priority 5, 1 hit at 2 min), z (2 GiB,
    2 hits, last at 3 min), all only at the origin (10 000 ms/GiB).
    LFU, fewest hits: y 1, z 2, x 3. Cost-aware, max(1, hits * priority) * 10 000 ms per GiB: z 2 * 20 000 / 2 =
    20 000, x 3 * 10 000 = 30 000, y 5 * 10 000 = 50 000. LRU: x (1), y (2), z (3)."""
    p = pool(policy)
    for module in (spec("x", 1), spec("y", 1, priority=5), spec("z", 2)):
        p.admit(module, ENGINE, T0)
    for at, module_id in ((0.5, "x"), (0.7, "x"), (1, "x"), (2, "y"), (2.5, "z"), (3, "z")):
        p.hit(module_id, minutes(at))
    return p


@pytest.mark.parametrize(("policy", "victim"), [("lfu", "y"), ("cost_aware", "z"), ("lru", "x")])
def test_each_policy_evicts_its_own_victim_for_one_gib(policy: str, victim: str) -> None:
    p = three_in_the_engine(policy)
    assert evicted(p.admit(spec("n", 1), ENGINE, minutes(6))) == [victim]
    assert p.resident_tiers(victim) == ()


def test_lfu_evicts_fewest_hits_first_exactly() -> None:
    """Two GiB needed: LFU takes y (1 hit), then z (2 hits); the priority that keeps y under cost_aware is not
    counted."""
    p = three_in_the_engine("lfu")
    assert p.admit(spec("n", 2), ENGINE, minutes(6)) == [
        Eviction(module_id="y", tier=ENGINE, bytes=GIB),
        Eviction(module_id="z", tier=ENGINE, bytes=2 * GIB),
    ]
    assert p.resident_tiers("x") == (ENGINE,)


def test_a_module_held_by_a_cheaper_lower_tier_leaves_first() -> None:
    """Reload cost is counted from where the module would come back from: m2 is also in host RAM (250 ms/GiB),
    m1 only in the object store (10 000 ms/GiB), so m2 leaves first although the id tie-break says m1."""
    p = pool()
    p.admit(spec("m2", 2), RAM, T0)
    for module_id in ("m1", "m2"):
        p.admit(spec(module_id, 2), ENGINE, T0)
    assert evicted(p.admit(spec("m3", 1), ENGINE, T0)) == ["m2"]
    assert p.resident_tiers("m2") == (RAM,)


def test_evictions_are_counted_per_tier() -> None:
    p = workload("lru")
    p.admit(spec("e", 2), ENGINE, minutes(6))
    by_tier = {t.tier: t for t in p.stats(minutes(6)).tiers}
    assert (by_tier[ENGINE].evictions, by_tier[ENGINE].modules, by_tier[ENGINE].bytes) == (2, 2, 3 * GIB)
    assert by_tier[RAM].evictions == 0


def test_pinned_modules_are_never_evicted() -> None:
    p = pool("lru", engine_gib=3)
    p.admit(spec("p", 2), ENGINE, T0)  # the oldest: LRU would take it first
    p.pin("p")
    p.admit(spec("q", 1), ENGINE, minutes(1))
    assert evicted(p.admit(spec("r", 1), ENGINE, minutes(2))) == ["q"]
    p.unpin("p")
    assert evicted(p.admit(spec("s", 1), ENGINE, minutes(3))) == ["p"]


def test_pinned_modules_alone_filling_the_tier_refuse_admission_and_evict_nothing() -> None:
    p = pool(engine_gib=3)
    p.admit(spec("p", 2), ENGINE, T0)
    p.pin("p")
    p.admit(spec("q", 1), ENGINE, T0)
    with pytest.raises(TierFullError) as caught:
        p.admit(spec("big", 2), ENGINE, minutes(1))
    error = caught.value
    assert (error.status, error.reason) == (Status.RESOURCE_EXHAUSTED, "TIER_FULL")
    assert (error.tier, error.module_id, error.module_bytes, error.capacity_bytes, error.pinned_bytes) == (
        ENGINE, "big", 2 * GIB, 3 * GIB, 2 * GIB,
    )  # fmt: skip
    assert (p.resident_tiers("q"), p.resident_tiers("big")) == ((ENGINE,), ())


def test_a_module_larger_than_the_tier_is_refused() -> None:
    p = pool(engine_gib=1)
    p.admit(spec("small", 1), ENGINE, T0)
    with pytest.raises(TierFullError):
        p.admit(spec("huge", 2), ENGINE, T0)
    assert p.resident_tiers("small") == (ENGINE,)
    assert [m.module_id for m in p.stats(T0).modules] == ["small"]


def test_a_pin_covers_every_tier_the_module_enters() -> None:
    p = pool(ram_gib=2)
    p.admit(spec("p", 2), ENGINE, T0)
    p.pin("p")
    p.admit(spec("p", 2), RAM, T0)
    with pytest.raises(TierFullError):
        p.admit(spec("x", 1), RAM, T0)
    assert p.module("p", T0).pinned


def test_admitting_a_resident_module_again_changes_nothing() -> None:
    p = pool()
    p.admit(spec("a", 1), ENGINE, T0)
    assert p.admit(spec("a", 1), ENGINE, minutes(1)) == []
    assert p.stats(T0).tiers[0].bytes == GIB


def test_hits_count_in_the_fastest_tier_and_misses_in_faster_ones() -> None:
    p = pool()
    p.admit(spec("a", 1), RAM, T0)
    p.admit(spec("a", 1), DISK, T0)
    assert p.hit("a", minutes(1)) == RAM
    assert p.hit("nowhere", minutes(1)) is None
    counts = {t.tier: (t.hits, t.misses) for t in p.stats(minutes(1)).tiers}
    assert counts == {ENGINE: (0, 2), RAM: (1, 1), DISK: (0, 1)}


def test_hits_older_than_15_minutes_stop_counting() -> None:
    p = pool()
    p.admit(spec("a", 1), ENGINE, T0)
    p.hit("a", T0)
    p.hit("a", minutes(10))
    assert p.hits_last_15m("a", minutes(10)) == 2
    assert p.hits_last_15m("a", minutes(14.99)) == 2
    assert p.hits_last_15m("a", minutes(15)) == 1  # a hit exactly 15 minutes old is out
    assert p.hits_last_15m("a", minutes(24.99)) == 1
    assert p.hits_last_15m("a", minutes(25)) == 0
    assert p.module("a", minutes(25)).last_used_at == minutes(10)


def two_on_disk_and_in_engine() -> Residency:
    """Engine of 2 GiB holding "busy" (5 hits at 0 min) and "idle" (2 hits at 12 min), both also on disk (both
    reload at 1000 ms/GiB)."""
    p = pool(engine_gib=2)
    for module_id in ("busy", "idle"):
        p.admit(spec(module_id, 1), DISK, T0)
        p.admit(spec(module_id, 1), ENGINE, T0)
    for _ in range(5):
        p.hit("busy", T0)
    p.hit("idle", minutes(12))
    p.hit("idle", minutes(12))
    return p


def test_the_keep_value_counts_only_the_last_15_minutes_of_hits() -> None:
    """At 13 min: busy 1000·5 = 5000, idle 1000·2 = 2000. At 16 min busy's hits have aged out: 1000·1 = 1000."""
    assert evicted(two_on_disk_and_in_engine().admit(spec("x", 1), ENGINE, minutes(13))) == ["idle"]
    assert evicted(two_on_disk_and_in_engine().admit(spec("x", 1), ENGINE, minutes(16))) == ["busy"]


def both_in_engine_one_also_in_ram_one_also_on_disk() -> Residency:
    p = pool(engine_gib=2)
    p.admit(spec("on_disk", 1), DISK, T0)
    p.admit(spec("in_ram", 1), RAM, T0)
    p.admit(spec("in_ram", 1), ENGINE, T0)
    p.admit(spec("on_disk", 1), ENGINE, T0)
    return p


def test_a_measured_reload_cost_changes_the_eviction_order() -> None:
    guessed = both_in_engine_one_also_in_ram_one_also_on_disk()
    assert evicted(guessed.admit(spec("x", 1), ENGINE, T0)) == ["in_ram"]  # guesses: RAM 250 < disk 1000 ms/GiB
    measured = both_in_engine_one_also_in_ram_one_also_on_disk()
    measured.record_load(RAM, GIB, 2.0)  # RAM measured at 2000 ms/GiB: now dearer than disk
    assert evicted(measured.admit(spec("x", 1), ENGINE, T0)) == ["on_disk"]


def ram_full_of_disk_modules() -> Residency:
    """Host RAM of 2 GiB holding v (3 hits) and w (2 hits), 1 GiB each, both also on disk. A RAM copy saves each
    use disk 1000 - RAM 250 = 750 ms: v 3 * 750 = 2250, w 2 * 750 = 1500."""
    p = pool(ram_gib=2)
    for module_id, hits in (("v", 3), ("w", 2)):
        p.admit(spec(module_id, 1), DISK, T0)
        p.admit(spec(module_id, 1), RAM, T0)
        for _ in range(hits):
            p.hit(module_id, minutes(1))
    return p


def test_cost_aware_admits_into_a_full_tier_only_a_module_that_saves_what_it_evicts() -> None:
    p = ram_full_of_disk_modules()
    p.admit(spec("n", 1), DISK, minutes(2))
    p.hit("n", minutes(2))
    assert not p.worth_admitting(spec("n", 1), RAM, minutes(2))  # 1 * 750 < w's 1500
    p.hit("n", minutes(3))
    assert p.worth_admitting(spec("n", 1), RAM, minutes(3))  # 2 * 750 = 1500 >= 1500
    p.hit("far", minutes(3))  # only at the origin: 10 000 - 250 = 9750 >= 1500 on its first hit
    assert p.worth_admitting(spec("far", 1), RAM, minutes(3))
    assert p.resident_tiers("n") == (DISK,)  # asking admits nothing


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_lru_and_lfu_admit_whatever_asks(policy: str) -> None:
    p = pool(policy, ram_gib=2)
    p.admit(spec("v", 1), RAM, T0)
    p.admit(spec("w", 1), RAM, T0)
    for _ in range(5):
        p.hit("v", minutes(1))
        p.hit("w", minutes(1))
    assert p.worth_admitting(spec("n", 1), RAM, minutes(2))


def test_a_module_that_fits_or_is_resident_is_always_worth_admitting() -> None:
    p = ram_full_of_disk_modules()
    assert p.worth_admitting(spec("v", 1), RAM, minutes(2))  # there already
    assert p.worth_admitting(spec("n", 1), ENGINE, minutes(2))  # the engine has room


def test_worth_admitting_defers_to_admit_when_pinned_modules_leave_no_room() -> None:
    p = ram_full_of_disk_modules()
    p.pin("v")
    p.pin("w")
    p.hit("n", minutes(2))
    assert p.worth_admitting(spec("n", 1), RAM, minutes(2))  # nothing the policy could weigh it against
    with pytest.raises(TierFullError):
        p.admit(spec("n", 1), RAM, minutes(2))


def test_hits_are_counted_for_modules_no_tier_holds() -> None:
    p = pool()
    p.hit("m", minutes(1))
    p.hit("m", minutes(2))
    assert p.hits_last_15m("m", minutes(2)) == 2
    p.admit(spec("m", 1), DISK, minutes(2))  # admitted, it keeps them
    assert p.module("m", minutes(2)).hits_last_15m == 2
    p.hit("m", minutes(3))
    p.remove("m", DISK)  # no tier holds it: forgotten but for its hits
    assert p.hits_last_15m("m", minutes(3)) == 3
    assert p.hits_last_15m("m", minutes(17)) == 1  # those of minutes 1 and 2 aged out
    p.hit("other", minutes(20))  # hits after the window drop stale records
    assert p.hits_last_15m("m", minutes(20)) == 0


def test_a_fixed_cost_per_load_is_counted_apart_from_the_bytes() -> None:
    p = pool(fixed_ms={**NO_FIXED, DISK: 100.0})
    assert p.load_ms(DISK, 2 * GIB) == 100.0 + 2 * 1000.0
    assert p.record_load(DISK, GIB, 0.6, loads=2) == 400.0  # (600 - 2 * 100) ms over 1 GiB
    assert p.load_ms(DISK, 2 * GIB) == 100.0 + 2 * 400.0
    assert p.load_ms(ENGINE, 2 * GIB) == 0.0
    assert p.record_load(DISK, GIB, 0.05) == pytest.approx(0.2 * 0.0 + 0.8 * 400.0)  # faster than fixed: 0 per GiB


def test_a_fixed_cost_per_load_keeps_the_smaller_of_two_equally_used_modules() -> None:
    """Origin loads cost 2000 ms each plus 10 000 ms/GiB; a (1 GiB) and b (2 GiB) have 1 use each. Per GiB kept:
    a (2000 + 10 000) / 1 = 12 000, b (2000 + 20 000) / 2 = 11 000: b leaves. Without the fixed cost both are
    worth 10 000 and the id tie-break takes a."""
    for fixed, victim in ((2000.0, "b"), (0.0, "a")):
        p = pool(engine_gib=3, fixed_ms={**NO_FIXED, ORIGIN: fixed})
        p.admit(spec("a", 1), ENGINE, T0)
        p.admit(spec("b", 2), ENGINE, T0)
        assert evicted(p.admit(spec("n", 1), ENGINE, T0)) == [victim]


def test_reload_cost_is_an_exponentially_weighted_average_of_measured_loads() -> None:
    p = pool()
    assert p.reload_ms_per_gib(DISK) == 1000.0  # the configured guess
    assert p.record_load(DISK, 2 * GIB, 1.0) == 500.0  # the first measurement replaces the guess
    assert p.record_load(DISK, GIB, 1.0) == pytest.approx(0.2 * 1000 + 0.8 * 500)
    assert p.stats(T0).tiers[2].reload_ms_per_gib == pytest.approx(600.0)
    assert p.reload_ms_per_gib(RAM) == 250.0  # other tiers untouched
    with pytest.raises(InvalidFieldError):
        p.record_load(DISK, 0, 1.0)


def test_drop_removes_a_module_from_every_tier_even_pinned() -> None:
    p = pool()
    for tier in (DISK, ENGINE, RAM):
        p.admit(spec("a", 1), tier, T0)
    p.pin("a")
    assert p.drop("a") == (ENGINE, RAM, DISK)
    assert p.resident_tiers("a") == ()
    assert all(t.bytes == 0 and t.modules == 0 and t.evictions == 0 for t in p.stats(T0).tiers)
    assert p.drop("a") == ()  # a redelivered invalidation event is harmless
    with pytest.raises(ModuleNotResidentError):
        p.pin("a")


def test_stats_list_tiers_fastest_first_and_modules_by_id() -> None:
    p = pool()
    p.admit(spec("b", 2, priority=2), RAM, T0)
    p.admit(spec("a", 1), ENGINE, T0)
    p.hit("b", minutes(1))
    stats = p.stats(minutes(1))
    assert [t.tier for t in stats.tiers] == [ENGINE, RAM, DISK]
    assert [t.capacity_bytes for t in stats.tiers] == [4 * GIB, 8 * GIB, 16 * GIB]
    b = stats.modules[1]
    assert [m.module_id for m in stats.modules] == ["a", "b"]
    assert (b.tiers, b.bytes, b.token_count, b.pinned, b.route_priority, b.hits_last_15m, b.last_used_at) == (
        (RAM,), 2 * GIB, 200, False, 2, 1, minutes(1),
    )  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        lambda: TierBudgets(engine_bytes=0, host_ram_bytes=1, local_disk_bytes=1),
        lambda: PoolSettings(
            budgets=TierBudgets(engine_bytes=1, host_ram_bytes=1, local_disk_bytes=1), eviction_policy="x"
        ),
        lambda: ModuleSpec(module_id="m", bytes=1, token_count=1, route_priority=0),
        lambda: ModuleSpec(module_id="m", bytes=0, token_count=1),
        lambda: PoolSettings(
            budgets=TierBudgets(engine_bytes=1, host_ram_bytes=1, local_disk_bytes=1), load_fixed_ms={ENGINE: 0.0}
        ),
    ],
)
def test_settings_and_specs_are_validated(make: object) -> None:
    with pytest.raises(InvalidFieldError):
        make()  # type: ignore[operator]


def test_a_module_id_keeps_its_size() -> None:
    p = pool()
    p.admit(spec("a", 1), ENGINE, T0)
    with pytest.raises(InvalidFieldError):
        p.admit(spec("a", 2), RAM, T0)


# --- the invariants, on any sequence of operations -----------------------------------------------------------

IDS = [f"m{i}" for i in range(6)]
SIZES = {module_id: (i % 3 + 1) * GIB for i, module_id in enumerate(IDS)}  # 1, 2 or 3 GiB
OPS = st.one_of(
    st.tuples(st.just("admit"), st.sampled_from(IDS), st.sampled_from([ENGINE, RAM, DISK]), st.integers(1, 3)),
    st.tuples(st.just("hit"), st.sampled_from(IDS)),
    st.tuples(st.just("pin"), st.sampled_from(IDS)),
    st.tuples(st.just("unpin"), st.sampled_from(IDS)),
    st.tuples(st.just("drop"), st.sampled_from(IDS)),
)


def apply(p: Residency, op: tuple[object, ...], now: datetime) -> None:
    kind, module_id = op[0], str(op[1])
    pinned_before = {m.module_id for m in p.stats(now).modules if m.pinned}
    try:
        if kind == "admit":
            module = ModuleSpec(module_id=module_id, bytes=SIZES[module_id], token_count=1, route_priority=int(op[3]))  # type: ignore[call-overload]
            evictions = p.admit(module, op[2], now)  # type: ignore[arg-type]
            assert not {e.module_id for e in evictions} & pinned_before
        elif kind == "hit":
            p.hit(module_id, now)
        elif kind == "pin":
            p.pin(module_id)
        elif kind == "unpin":
            p.unpin(module_id)
        else:
            p.drop(module_id)
    except (TierFullError, ModuleNotResidentError):
        pass


def check_invariants(p: Residency, pinned: set[str], now: datetime) -> None:
    stats = p.stats(now)
    for tier in stats.tiers:
        resident = [m for m in stats.modules if tier.tier in m.tiers]
        assert tier.bytes == sum(m.bytes for m in resident) <= tier.capacity_bytes
        assert tier.modules == len(resident)
    assert pinned <= {m.module_id for m in stats.modules}  # a pinned module left only by drop


@settings(max_examples=200, deadline=None)
@given(policy=st.sampled_from(["cost_aware", "lru", "lfu"]), ops=st.lists(OPS, max_size=60))
def test_any_sequence_keeps_tiers_within_budget_and_pinned_modules_resident(
    policy: str, ops: list[tuple[object, ...]]
) -> None:
    p = pool(policy, engine_gib=3, ram_gib=5, disk_gib=7)
    for step, op in enumerate(ops):
        now = minutes(step)
        pinned = {m.module_id for m in p.stats(now).modules if m.pinned}
        apply(p, op, now)
        still_pinned = pinned - ({str(op[1])} if op[0] in ("drop", "unpin") else set())
        check_invariants(p, still_pinned, now)


def test_a_module_held_by_a_running_request_is_not_evicted() -> None:
    p = pool(engine_gib=2)
    p.admit(spec("a", 1), ENGINE, T0)
    p.admit(spec("b", 1), ENGINE, minutes(1))
    p.hold("a")  # a request runs on a: b leaves although LRU order says a
    assert evicted(p.admit(spec("c", 1), ENGINE, minutes(2))) == ["b"]
    p.hold("c")
    with pytest.raises(TierFullError):
        p.admit(spec("d", 2), ENGINE, minutes(3))
    p.release("a")
    p.release("c")
    assert sorted(evicted(p.admit(spec("d", 2), ENGINE, minutes(4)))) == ["a", "c"]


def test_remove_takes_a_module_out_of_one_tier_without_counting_an_eviction() -> None:
    p = pool()
    p.admit(spec("a", 1), ENGINE, T0)
    p.admit(spec("a", 1), DISK, T0)
    p.pin("a")
    assert p.remove("a", DISK) is True
    assert p.remove("a", DISK) is False
    assert p.resident_tiers("a") == (ENGINE,)
    assert p.remove("a", ENGINE) is True
    assert p.resident_tiers("a") == ()
    assert all(t.evictions == 0 and t.bytes == 0 for t in p.stats(T0).tiers)


def test_idle_in_names_the_modules_of_a_tier_no_request_uses() -> None:
    p = pool()
    for module in (spec("a", 1), spec("b", 1)):
        p.admit(module, ENGINE, T0)
    p.admit(spec("c", 1), RAM, T0)
    p.hold("a")
    assert p.idle_in(ENGINE) == {"b"}
    p.release("a")
    assert p.idle_in(ENGINE) == {"a", "b"}
    assert p.idle_in(RAM) == {"c"}
