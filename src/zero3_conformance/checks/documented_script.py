"""transformers' documented use of HfDeepSpeedConfig outside the Trainer, run as a user runs it (A5):

    torchrun --nproc-per-node N documented_script.py --subject transformers --way from_pretrained \
        --checkpoint DIR --ds-config CONFIG.json --inputs BATCH.pt --out DIR

The documentation's lines, with a local checkpoint in place of a hub id: make the config object and keep it
alive, build with `AutoModel.from_pretrained(...)` (or `AutoModel.from_config(AutoConfig.from_pretrained(...))`),
then `deepspeed.initialize(model=model, config_params=ds_config)`. No process group exists beforehand: the
build makes it from torchrun's variables, as it does for a user. The documentation writes
`engine = deepspeed.initialize(...)`; initialize returns a tuple, whose first element is the engine.

This project's own subjects (`reference`, `mutant:NAME`) are built through their interface instead.
Each rank writes what it saw to OUT/rank<N>.json as it goes; the A5 check compares it with the baseline.
The script decides nothing itself: the training step's batch is the check's, made for the model's modality.
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from typing import Any


def build(subject: str, subject_module: str, way: str, checkpoint: str, ds_config: dict[str, Any]) -> tuple[Any, Any]:
    """(the object that must stay alive, the model)."""
    from transformers import AutoConfig, AutoModel

    if subject == "transformers":
        from transformers.integrations import HfDeepSpeedConfig

        # must run before instantiating the model to detect ZeRO-3
        dschf = HfDeepSpeedConfig(ds_config)  # keep this object alive
        if way == "from_pretrained":
            model = AutoModel.from_pretrained(checkpoint)
        else:
            config = AutoConfig.from_pretrained(checkpoint)
            model = AutoModel.from_config(config)
        return dschf, model
    from zero3_conformance.subjects import get_subject

    implementation = get_subject(subject, subject_module)
    config_object = implementation.make_config(ds_config)
    if way == "from_pretrained":
        model, _ = implementation.from_pretrained(AutoModel, checkpoint)
    else:
        model = implementation.from_config(AutoModel, AutoConfig.from_pretrained(checkpoint))
    return config_object, model


def parameters_seen(model: Any) -> dict[str, dict[str, Any]]:
    """Each parameter as ZeRO-3 left it on this rank."""
    seen = {}
    for name, param in model.named_parameters():
        shard = getattr(param, "ds_tensor", None)
        seen[name] = {
            "zero3": hasattr(param, "ds_id"),
            "status": getattr(getattr(param, "ds_status", None), "name", None),
            "shape": list(getattr(param, "ds_shape", param.shape)),
            "local_numel": param.numel(),
            "shard_numel": None if shard is None else shard.numel(),
        }
    return seen


def loss_of(model: Any, inputs: dict[str, Any]) -> Any:
    """A loss of the base model's first output, which every parameter before it feeds. The check computes the
    same loss of its baseline before launching, so an input the model cannot take is known beforehand."""
    return model(**inputs)[0].float().pow(2).mean()


def on_device(inputs: dict[str, Any], device: Any, dtype: Any) -> dict[str, Any]:
    """The batch where the engine runs: floating-point inputs (pixels, audio) in the parameters' dtype."""
    return {name: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
            for name, value in inputs.items()}


def run(args: argparse.Namespace, seen: dict[str, Any], at: Any) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    ds_config = json.loads(open(args.ds_config, encoding="utf-8").read())
    at(f"AutoModel.{args.way} under the config object")
    keep_alive, model = build(args.subject, args.subject_module, args.way, args.checkpoint, ds_config)
    seen["process_group"] = {"initialized": dist.is_initialized(),
                             "world_size": dist.get_world_size() if dist.is_initialized() else None}
    seen["parameters"] = parameters_seen(model)
    at("deepspeed.initialize(model=model, config_params=ds_config)")
    engine, *_ = deepspeed.initialize(model=model, config_params=ds_config)
    at("a training step (forward, backward, step), then a forward")
    engine.train()  # as a training loop does: from_pretrained returns the model in eval mode
    inputs = on_device(torch.load(args.inputs), engine.device, next(engine.module.parameters()).dtype)
    before = loss_of(engine, inputs)
    engine.backward(before)
    engine.step()
    with torch.no_grad():
        after = loss_of(engine, inputs)
    seen["losses"] = [float(before), float(after)]
    at("done")
    del keep_alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", required=True)
    parser.add_argument("--subject-module", default="zero3_conformance.subjects", help="the module registering it")
    parser.add_argument("--way", choices=("from_pretrained", "from_config"), required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--ds-config", required=True)
    parser.add_argument("--inputs", required=True, help="the training step's batch (torch.save of a dict), which "
                                                         "the check made for this model")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    seen: dict[str, Any] = {"rank": int(os.environ["RANK"]), "step": "starting"}
    path = os.path.join(args.out, f"rank{seen['rank']}.json")

    def at(step: Any) -> None:
        """Writes what this rank saw so far: a rank that hangs has said where."""
        seen["step"] = step
        with open(path + ".tmp", "w", encoding="utf-8") as out:
            json.dump(seen, out)
        os.replace(path + ".tmp", path)

    at("importing torch, transformers and deepspeed")
    try:
        run(args, seen, at)
    except Exception as exc:  # noqa: BLE001 - what raised, and where, is the finding
        seen["error"] = f"{type(exc).__name__}: {exc}"
        seen["traceback"] = traceback.format_exc()[-3000:]
        at(seen["step"])


if __name__ == "__main__":
    main()
