"""Runs cases the way `zero3-conformance run` does and says where the wall time went: building zoo
checkpoints, starting worlds (spawning ranks, importing torch/deepspeed/transformers, joining a process
group), and the checks themselves per clause group."""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from typing import Any

from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.execution.checkpoints import write_checkpoints
from zero3_conformance.execution.runner import Runner
from zero3_conformance.results import BAD_STATUSES


def run_timed(cases: list, fresh_world_per_check: bool = False, cold_zoo: bool = False,
              start_method: str | None = None) -> dict[str, Any]:
    """{"wall", "zoo", "world_start", "worlds_started", "groups": {clause group: s}, "cases", "bad"}.
    `start_method` "spawn": ranks spawned afresh, not forked from the preloaded server."""
    with tempfile.TemporaryDirectory(prefix="zero3-zoo-") as cache:
        if cold_zoo:  # an empty zoo cache: checkpoints are built, and timed
            os.environ["ZERO3_CONFORMANCE_CACHE"] = cache
        try:
            return _run(cases, fresh_world_per_check, start_method)
        finally:
            if cold_zoo:
                del os.environ["ZERO3_CONFORMANCE_CACHE"]


def _run(cases: list, fresh_world_per_check: bool, start_method: str | None) -> dict[str, Any]:
    started = time.monotonic()
    write_checkpoints(cases)
    zoo = time.monotonic() - started
    runner = Runner(DEFAULT_ZERO3_CONFIG, repeat=0)  # the checks' own cost, one try each
    runner.pool.start_method = start_method
    if start_method == "spawn":  # spawned ranks import only what the checks need, as a launcher per check would
        runner.pool.preload = tuple(m for m in runner.pool.preload if m != "zero3_conformance.execution.warm")
    starting: list[float] = []
    get = runner.pool.get

    def timed_get(world_size: int, fresh: bool = False) -> Any:
        before = time.monotonic()
        known = runner.pool._worlds.get(world_size)
        world = get(world_size, fresh)
        if world is not known:
            starting.append(time.monotonic() - before)
        return world

    runner.pool.get = timed_get
    groups: dict[str, float] = defaultdict(float)
    bad = 0
    try:
        for case in cases:
            if fresh_world_per_check:
                runner.pool.close()
            already = sum(starting)
            record = runner.run_case(case)
            groups[case.clause[0]] += record.duration_s - (sum(starting) - already)
            bad += record.status in BAD_STATUSES
    finally:
        runner.close()
    return {"wall": time.monotonic() - started, "zoo": zoo, "world_start": sum(starting),
            "worlds_started": len(starting), "groups": dict(groups), "cases": len(cases), "bad": bad}
