"""Runs one case inside a rank: the check, its verdict on this rank, and the clean-up between cases.
`execute` is what the runner hands each rank of a world (by name: "zero3_conformance.checks.execute:execute")."""

from __future__ import annotations

import gc
import logging
import traceback

from ..compat import zero3_partitioning
from ..dsconfig import PLAIN
from ..errors import exception_line
from ..protocol import RankResult, RankTask, Status
from ..subjects import clear_leftover_zero3
from ..worlds.world import RankContext
from .base import REGISTRY, Case, NotApplicable, SpoiledProcess, SubjectRaised, engine_config
from .registry import load_checks

# A rank's metric for a case not judged because this process's builds without ZeRO differ from the clean
# structure after earlier cases: the runner runs the case again in a freshly started world.
SPOILED = "spoiled_process"
MAX_FINDINGS = 100  # a rank's structured findings kept per case (a record lists its first ones; the message counts)
_cases_here = 0  # cases this process ran: a build that differs from its clean structure in the first is no leftover
_variant_errors: dict[str, str] = {}  # per variant: DeepSpeed's error from an attempted build ("" where it builds)


def _require_variant_builds(ctx: RankContext, task: RankTask) -> None:
    """SKIP, quoting DeepSpeed's own error, where DeepSpeed does not build the case's ZeRO-3 configuration
    variant here: a module constructed under the partitioning context that variant's config asks for, wrapped
    in an engine and run forward (MiCS's gathers, for one, need collectives some backends lack)."""
    variant = task.variant
    if variant == PLAIN:
        return
    if variant not in _variant_errors:
        import deepspeed
        import torch

        try:
            with zero3_partitioning(task.ds_config):
                module = torch.nn.Linear(8, 8)
            engine, *_ = deepspeed.initialize(model=module, config=engine_config(task.ds_config))
            engine(torch.ones(2, 8, dtype=next(engine.parameters()).dtype, device=ctx.device))
            getattr(engine, "destroy", lambda: None)()
            _variant_errors[variant] = ""
        except Exception as exc:  # noqa: BLE001 - DeepSpeed's answer is the reason the case cannot run
            _variant_errors[variant] = f"DeepSpeed {deepspeed.__version__} does not build the {variant} variant " \
                                       f"on {ctx.backend}: {exception_line(exc)}"
    if _variant_errors[variant]:
        raise NotApplicable(_variant_errors[variant])


def execute(ctx: RankContext, task: RankTask) -> RankResult:
    """Runs one case in this rank; always returns its result."""
    load_checks()
    # DeepSpeed's warnings (e.g. about the client optimizers N3 uses on purpose) would bury the run's output.
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    entry = REGISTRY[task.check]
    global _cases_here
    inherited = clear_leftover_zero3()  # whatever an earlier case left, this one starts clean
    case = Case(ctx, task)
    case.earlier_cases, _cases_here = _cases_here, _cases_here + 1
    try:
        _require_variant_builds(ctx, task)
        entry.fn(case)
        if not case.findings and any(case.expected_to_compare.values()) and not any(case.compared.values()):
            case.fail(f"compared nothing: the clean structure has {case.expected_to_compare}, all left out "
                      f"({case.metrics.get('not_compared')})", "compared_less", "", case.expected_to_compare,
                      "nothing compared")
        status, message = (Status.FAIL, "\n".join(case.findings)) if case.findings else (Status.PASS, "")
    except NotApplicable as exc:
        status, message = Status.SKIP, str(exc)
    except SubjectRaised as exc:
        status, message = Status.FAIL, "\n".join([*case.findings, str(exc)])
        case.found.extend(exc.findings)
    except SpoiledProcess as exc:
        status, message = Status.ERROR, f"not judged: after {case.earlier_cases} earlier cases in this process, {exc}"
        case.metrics[SPOILED] = {"model_class": exc.model_class, "differences": exc.found,
                                 "earlier_cases": case.earlier_cases}
    except Exception:  # noqa: BLE001 - the check itself broke
        status, message = Status.ERROR, traceback.format_exc()[-3000:]
    finally:
        case.close()
        gc.collect()  # drop this case's config objects and models before the next case
    left = clear_leftover_zero3()
    if left:  # the culprit is named in its own record; the next case starts clean regardless
        case.metrics["left_zero3_on"] = left
    if inherited:
        case.metrics["started_with_zero3_on"] = inherited
    if case.expected_to_compare:  # the runner makes them record fields
        case.metrics.update(compared=case.compared, expected_to_compare=case.expected_to_compare)
    return RankResult(status, message, case.metrics, case.agreed,
                      case.found[:MAX_FINDINGS] if status is Status.FAIL else [])
