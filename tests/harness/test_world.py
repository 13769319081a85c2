"""Real worlds of 2 ranks (gloo on CPU): tasks run in every rank, faults are classified, worlds restart."""

import pytest

from zero3_conformance.protocol import verdict
from zero3_conformance.results import CRASH, ERROR, TIMEOUT
from zero3_conformance.worlds.world import WorldPool

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("harness-world")]


@pytest.fixture(scope="module")
def pool():
    pool = WorldPool("gloo")
    yield pool
    pool.close()


def test_a_world_runs_many_tasks_in_every_rank(pool):
    world = pool.get(2)
    for _ in range(5):
        outcome = world.run("harness.faults:all_reduce_rank_sum", None, 60)
        assert {r: reply.value for r, reply in outcome.replies.items()} == {0: 3.0, 1: 3.0}
    assert pool.get(2) is world  # persistent: the same world serves the next task


def test_hang_is_a_timeout_with_stacks_and_the_world_is_replaced(pool):
    world = pool.get(2)
    outcome = world.run("harness.faults:hang_on_rank", 0, timeout_s=4)
    status, message, _ = verdict(outcome, 2)
    assert status == TIMEOUT
    assert "hang_on_rank" in message  # every waiting rank's Python stack is in the message
    assert world.broken
    assert pool.get(2).run("harness.faults:all_reduce_rank_sum", None, 60).replies[1].value == 3.0


def test_exception_on_one_rank_is_an_error_and_releases_the_others(pool):
    outcome = pool.get(2).run("harness.faults:raise_on_rank", 1, timeout_s=120)
    status, message, _ = verdict(outcome, 2)
    assert status == ERROR
    assert "injected failure on rank 1" in message
    assert "rank 1" in message
    assert outcome.seconds < 30  # released after the straggler grace, not the whole limit


def test_dead_rank_is_a_crash_with_its_signal(pool):
    outcome = pool.get(2).run("harness.faults:kill_rank", 1, timeout_s=120)
    status, message, _ = verdict(outcome, 2)
    assert status == CRASH
    assert "SIGSEGV" in message


def test_world_recovers_after_faults(pool):
    outcome = pool.get(2).run("harness.faults:all_reduce_rank_sum", None, 60)
    assert not outcome.timed_out
    assert not outcome.exit_codes
    assert [reply.value for reply in outcome.replies.values()] == [3.0, 3.0]


def test_a_stale_jit_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    import os
    import time

    from zero3_conformance.op_cache import STALE_LOCK_S, clear_stale_build_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cu130" / "deepspeed_shm_comm" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    old = time.time() - STALE_LOCK_S - 60
    os.utime(stale, (old, old))
    held = tmp_path / "py311_cu131" / "deepspeed_shm_comm" / "lock"  # torch 2.14 holds an OS lock on it
    held.parent.mkdir(parents=True)
    held.touch()
    os.utime(held, (old, old))
    import fcntl

    with open(held, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert clear_stale_build_locks() == [stale]
    assert not stale.exists()
    assert fresh.exists()
    assert held.exists()


def test_a_world_that_will_not_start_is_tried_once_per_run(monkeypatch):
    from zero3_conformance.catalog import build_cases
    from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
    from zero3_conformance.execution.runner import Runner
    from zero3_conformance.results import ERROR
    from zero3_conformance.worlds.world import WorldStartError

    runner = Runner(DEFAULT_ZERO3_CONFIG)
    attempts = []

    def failing_start(world_size, fresh=False):
        attempts.append(world_size)
        raise WorldStartError(f"world of {world_size} ranks (gloo) did not start: start timed out after 600 s")

    monkeypatch.setattr(runner.pool, "get", failing_start)
    cases = build_cases(subjects=["reference"], clauses=["P1"], world_sizes=[2], models=["llama", "gpt2"])
    records = [runner.run_case(case) for case in cases]
    assert attempts == [2]
    assert [r.status for r in records] == [ERROR] * len(cases)
    assert "did not start: start timed out" in records[0].message
    assert records[1].message.startswith("not run: world of 2 ranks (gloo) did not start")


_cycle_refs: list = []


class _Node:
    pass


def make_garbage_cycle(ctx, payload):
    """Run in every rank: leaves a reference cycle (no other reference to it) behind, and a weak reference."""
    import weakref

    node = _Node()
    node.self = node
    _cycle_refs.append(weakref.ref(node))
    return True


def garbage_cycle_is_gone(ctx, payload):
    return _cycle_refs[-1]() is None


def test_a_task_cyclic_garbage_is_still_collected_between_tasks(pool):
    # Survivors of each task are set aside from the cyclic collector (gc.freeze): garbage must be collected first.
    world = pool.get(2)
    assert all(r.value for r in world.run(f"{__name__}:make_garbage_cycle", None, 60).replies.values())
    assert all(r.value for r in world.run(f"{__name__}:garbage_cycle_is_gone", None, 60).replies.values())


def test_a_world_that_fails_on_deepspeeds_op_names_the_op_cache_in_one_line(tmp_path, monkeypatch):
    """DeepSpeed builds or loads its JIT op as a world starts; where that fails (an op of another release, a
    build cut short, a directory it cannot write), the first line of the error names the op's directory."""
    from zero3_conformance.worlds.world import World, WorldStartError

    not_a_directory = tmp_path / "torch_extensions"
    not_a_directory.write_text("")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(not_a_directory))
    with pytest.raises(WorldStartError) as raised:
        World(1, "gloo", start_timeout_s=300).start()
    first_line = str(raised.value).splitlines()[0]
    assert first_line.startswith("world of 1 ranks (gloo) did not start: DeepSpeed's JIT-built op in "
                                 f"{not_a_directory} failed to build or load"), str(raised.value)
