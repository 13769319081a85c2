"""Started by torchrun in the tests: every rank joins the launched world; rank 0 runs the tasks named on the
command line (faults.py's) in it and prints, as JSON, each task's outcome; every rank then exits with the
status rank 0 hands out (3, so that the tests can tell it from a crash)."""

import json
import sys
from pathlib import Path

from zero3_conformance.worlds import launched

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tasks are harness.faults's, as in the tests

STATUS = 3
LIMIT_S = 60.0  # each task's limit: above the launched world's grace for ranks left inside a task


def main(tasks: list[str]) -> int:
    launch = launched.detect()
    ctx = launched.join(launch, "gloo")
    if launch.rank != 0:
        return launched.leave(*launched.serve(ctx))
    world = launched.LaunchedWorld(ctx, launch)
    pool = launched.LaunchedPool(world)
    outcomes = []
    for task in tasks:
        name, _, argument = task.partition("=")
        try:
            outcome = pool.get(ctx.world_size).run(f"harness.faults:{name}", int(argument or 0), LIMIT_S)
        except launched.WorldStartError as exc:
            outcomes.append({"task": task, "not_run": str(exc)})
            continue
        outcomes.append({"task": task, "timed_out": outcome.timed_out, "seconds": outcome.seconds,
                         "stacks": outcome.stacks, "replies": {rank: {"value": r.value, "error": r.error,
                                                                      "traceback": r.traceback}
                                                               for rank, r in outcome.replies.items()}})
    print("OUTCOMES " + json.dumps(outcomes), flush=True)
    world.stop(STATUS)
    return launched.leave(STATUS, world.stuck)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
