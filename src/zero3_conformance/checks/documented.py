"""A5 — transformers' documented usage, as written: a script under torchrun, with no process group made
beforehand, builds the model partitioned across the world it launched, and DeepSpeed trains it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..compat import build_from_config
from ..dsconfig import partition_group_size
from ..finding_kinds import raised_kind
from ..inputs import (
    FIRST_ORDINARY_TOKEN,
    SEQUENCE_LENGTH,
    InputsUnavailable,
    forward_arguments,
    main_inputs,
    vocabulary,
)
from ..op_cache import use_own_op_cache
from ..worlds.launched import outside_any_world
from ..worlds.world import die_with_parent
from .base import Case, NotApplicable, ceil_div, check, engine_config
from .documented_script import loss_of

SCRIPT = Path(__file__).with_name("documented_script.py")
# The launched world's own limit, inside the check's: every rank of a fresh world imports torch, transformers
# and DeepSpeed, which takes most of a minute on a small machine.
LAUNCH_TIMEOUT_S = 150.0
# The engine needs an optimizer to step; torch's own AdamW needs no compiled DeepSpeed op on any accelerator.
OPTIMIZER = {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}
SHOWN = 8  # parameters named per kind of mismatch
BATCH_SEED = 0  # the training batch is the same on every run, as the zoo's checkpoints are
TRACEBACK_LINES = 16  # of a launched rank's traceback, the innermost

# The documentation's example model (openai-community/gpt2), from the zoo's checkpoint.
_DOCUMENTED: dict[str, Any] = dict(layouts=("safetensors",), world_sizes=(2,), families=("gpt2",),
                                   timeout_s=LAUNCH_TIMEOUT_S + 30)


@check("A5", "documented_from_pretrained", **_DOCUMENTED)
def documented_from_pretrained(case: Case) -> None:
    """The documented HfDeepSpeedConfig + AutoModel.from_pretrained + deepspeed.initialize, run under torchrun:
    partitioned across the launched world, and the engine steps."""
    _documented(case, "from_pretrained")


@check("A5", "documented_from_config", **_DOCUMENTED)
def documented_from_config(case: Case) -> None:
    """The documented HfDeepSpeedConfig + AutoModel.from_config + deepspeed.initialize, run under torchrun:
    partitioned across the launched world, and the engine steps."""
    _documented(case, "from_config")


def _documented(case: Case, way: str) -> None:
    if case.rank != 0:
        return  # rank 0 launches the user's world of the case's size; the harness's other ranks wait
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(case.checkpoint_path)
    baseline = case.keep(build_from_config(AutoModel, config))
    case.baseline_agrees(baseline, "AutoModel.from_config", dtypes=False)
    expected = {name: list(param.shape) for name, param in baseline.named_parameters()}
    batch = _training_batch(case, baseline, config)
    world_size = case.world_size
    with tempfile.TemporaryDirectory(prefix="zero3-conformance-a5-") as workdir:
        ds_config = dict(engine_config(case.ds_config), optimizer=OPTIMIZER)
        config_path = Path(workdir, "ds_config.json")
        config_path.write_text(json.dumps(ds_config), encoding="utf-8")
        inputs_path = Path(workdir, "inputs.pt")
        torch.save(batch, inputs_path)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(world_size), str(SCRIPT), "--subject", case.subject_name,
                   "--subject-module", case.subject_module, "--way", way, "--checkpoint", str(case.checkpoint_path),
                   "--ds-config", str(config_path), "--inputs", str(inputs_path), "--out", workdir]
        started = time.monotonic()
        exit_code, output = _launch(command, workdir)
        case.metrics["documented_usage"] = {"way": way, "world_size": world_size,
                                            "seconds": round(time.monotonic() - started, 1)}
        seen = {rank: _read(Path(workdir, f"rank{rank}.json")) for rank in range(world_size)}
    if not any(seen.values()):  # not one rank ran the script's first line: the launch failed, not the subject
        raise RuntimeError(f"torchrun started no rank of {SCRIPT.name} (exit code {exit_code})\n{output}")
    where = f"`torchrun --nproc-per-node {world_size}` of the documented {way} usage"
    if exit_code is None:
        case.fail(f"{where} did not finish within {LAUNCH_TIMEOUT_S:.0f} s; where each rank was: "
                  + "; ".join(f"launched rank {rank}: {s.get('step', 'wrote nothing')}" for rank, s in seen.items())
                  + f"\n{output}", "launch_failed", where, f"finished within {LAUNCH_TIMEOUT_S:.0f} s",
                  "; ".join(f"rank {rank}: {s.get('step', 'wrote nothing')}" for rank, s in seen.items()))
    for rank, ranks_view in seen.items():  # the ranks of the world torchrun launched, not the harness's
        _compare(case, f"launched rank {rank}", ranks_view, expected, world_size)
    if exit_code and not case.findings:
        case.fail(f"{where} exited {exit_code} after every rank finished\n{output}", "launch_failed", where,
                  "exit code 0", f"exit code {exit_code}")


def _training_batch(case: Case, baseline: Any, config: Any) -> dict[str, Any]:
    """The launched world's training batch, made from the config and the forward signature for the model's
    modality, and trained on once by the baseline without ZeRO: what the harness cannot make, or a batch the
    model cannot train on even without ZeRO, is a SKIP naming it, decided before either subject is called."""
    import torch

    model_class = type(baseline)
    arguments = forward_arguments(model_class)
    generator = torch.Generator().manual_seed(BATCH_SEED)
    try:
        batch = main_inputs(model_class, config, arguments, generator, SEQUENCE_LENGTH)
        if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in arguments:
            batch["decoder_input_ids"] = torch.randint(FIRST_ORDINARY_TOKEN, vocabulary(config), (1, SEQUENCE_LENGTH),
                                                       generator=generator)
    except InputsUnavailable as exc:
        raise NotApplicable(f"no training step of the documented usage for {model_class.__name__}: {exc}") from None
    with case.baseline_call(f"a training step of {model_class.__name__} on {', '.join(batch)}"):
        baseline.train()
        loss_of(baseline, batch).backward()
    baseline.zero_grad(set_to_none=True)
    return batch


def _launch(command: list[str], workdir: str) -> tuple[Any, str]:
    """(torchrun's exit code, or None where it did not finish in time; the end of its output)."""
    use_own_op_cache()  # torchrun's ranks build DeepSpeed's op where this stack's worlds do
    log_path = Path(workdir, "torchrun.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, env=outside_any_world(), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=lambda: die_with_parent(signal.SIGTERM))  # torchrun stops its ranks
        try:
            exit_code = process.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            exit_code = None
            _stop(process)
    output = log_path.read_text(encoding="utf-8", errors="replace")
    return exit_code, "--- torchrun output (end) ---\n" + output[-2500:] if output.strip() else "(no output)"


def _stop(process: subprocess.Popen) -> None:
    for signum, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, signum)
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _compare(case: Case, who: str, seen: dict[str, Any], expected: dict[str, list[int]], world_size: int) -> None:
    """What one rank of the launched world saw, against the contract: P1 for every parameter of the baseline,
    and an engine whose step changes the loss."""
    if not seen:
        case.fail(f"{who} wrote nothing: torchrun never started it", "launch_failed", who, "a started rank",
                  "nothing written")
        return
    if "error" in seen:
        where = "\n".join(seen.get("traceback", "").splitlines()[-TRACEBACK_LINES:])
        case.fail(f"{who}: {seen['step']} raised {seen['error']}\n{where}",
                  raised_kind(f"{seen['step']}: {seen['error']}"), "", f"{seen['step']} without an exception",
                  seen["error"])
        return
    group = seen.get("process_group") or {}
    case.expect(group.get("world_size") == world_size,
                f"{who}: after the build the process group is {group}, expected one of {world_size} ranks "
                f"(the world torchrun launched)", "launch_failed", f"{who}'s process group", f"{world_size} ranks",
                group)
    parameters = seen.get("parameters")
    if parameters is not None:
        _compare_parameters(case, who, parameters, expected, partition_group_size(case.ds_config, world_size))
    losses = seen.get("losses")
    if not losses:
        return  # a rank still inside the script: the launch's own finding says where it was
    case.expect(all(math.isfinite(loss) for loss in losses),
                f"{who}: the engine's losses before and after a step are {losses}, expected finite numbers",
                "non_finite", "loss", "finite losses", losses)
    case.expect(losses[0] != losses[1],
                f"{who}: the loss is {losses[0]!r} before and after engine.step(): the step changed nothing",
                "outside_tolerance", "loss", "a loss the step changes", losses)


def _compare_parameters(case: Case, who: str, parameters: dict[str, dict[str, Any]],
                        expected: dict[str, list[int]], group: int) -> None:
    missing = sorted(set(expected) - set(parameters))
    extra = sorted(set(parameters) - set(expected))
    # The launched script builds AutoModel's class, not the case's: its baseline stands for the clean structure
    # (judged against it where the classes are one, _documented).
    case.count(f"parameters of {who}", set(expected) & set(parameters), expected,
               dict.fromkeys(missing, "not in the launched model (a finding)"))
    case.expect(not missing, f"{who}: {len(missing)} of the baseline's parameters are not in the model: "
                             f"{', '.join(missing[:SHOWN])}", "parameters_missing", ", ".join(missing[:SHOWN]),
                f"{len(expected)} parameters", f"{len(missing)} missing")
    case.expect(not extra, f"{who}: {len(extra)} parameters the baseline lacks: {', '.join(extra[:SHOWN])}",
                "parameters_extra", ", ".join(extra[:SHOWN]), f"{len(expected)} parameters", f"{len(extra)} more")
    wrong: list[str] = []
    for name in sorted(set(expected) & set(parameters)):
        param, shape = parameters[name], expected[name]
        numel = math.prod(shape)
        want = {"zero3": True, "status": "NOT_AVAILABLE", "local_numel": 0, "shape": shape,
                "shard_numel": ceil_div(numel, group)}
        got = {key: param.get(key) for key in want}
        differing = [f"{key} {got[key]!r} (expected {want[key]!r})" for key in want if got[key] != want[key]]
        if differing:
            wrong.append(f"{name}: {', '.join(differing)}")
    if wrong:
        case.fail(f"{who}: {len(wrong)} of {len(expected)} parameters are not partitioned as P1 requires "
                  f"(shards of ceil(numel / {group}) elements, empty local tensor): " + "; ".join(wrong[:SHOWN]),
                  "not_partitioned", ", ".join(w.split(":")[0] for w in wrong[:SHOWN]), "partitioned as P1 requires",
                  "; ".join(wrong[:SHOWN]))
