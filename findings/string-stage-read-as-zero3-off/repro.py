# HfDeepSpeedConfig keeps zero_optimization.stage as written and compares it with the integer 3; DeepSpeed reads
# the string "3" as stage 3. So from_config builds the whole model on every rank, and deepspeed.initialize then
# runs it as ZeRO-3: no error, and the memory zero.Init was to save is spent. STAGE=int: the passing config.
import os, sys, torch, deepspeed, torch.distributed as dist
from transformers import AutoModelForCausalLM, GPT2Config
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
stage = 3 if os.environ.get("STAGE") == "int" else "3"
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
dschf = HfDeepSpeedConfig(ds_config)  # kept alive, as documented
model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
built_partitioned = hasattr(model.transformer.wte.weight, "ds_id")
engine, *_ = deepspeed.initialize(model=model, config=ds_config)
ran_stage = engine.zero_optimization_stage()
print(f"rank {dist.get_rank()}: stage {stage!r}: is_zero3() {dschf.is_zero3()}, built partitioned "
      f"{built_partitioned}, deepspeed.initialize runs stage {ran_stage}; expected built partitioned as stage 3")
ok = built_partitioned == (ran_stage == 3)
print("FINDING ABSENT" if ok else f"FINDING REPRODUCED: stage {stage!r} built whole, then run as ZeRO stage {ran_stage}")
dist.destroy_process_group()
sys.exit(0 if ok else 1)
