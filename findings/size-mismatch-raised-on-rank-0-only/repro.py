"""ZeRO-3 from_pretrained(num_labels=4) of a 2-label checkpoint raises the size mismatch on rank 0 only."""
import os, tempfile, sys, torch, deepspeed, torch.distributed as dist
from transformers import GPT2Config, GPT2ForSequenceClassification
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
rank, path = dist.get_rank(), os.path.join(tempfile.gettempdir(), "size-mismatch-raised-on-rank-0-only")
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": int(os.environ.get("ZERO_STAGE", 3))}}
config = GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=128, n_positions=32, num_labels=2, pad_token_id=0)
if rank == 0:
    GPT2ForSequenceClassification(config).save_pretrained(path)  # a 2-label checkpoint
dist.barrier()
dschf = HfDeepSpeedConfig(ds_config)  # kept alive: from_pretrained builds the model under zero.Init

try:
    GPT2ForSequenceClassification.from_pretrained(path, num_labels=4)  # no ignore_mismatched_sizes: should raise
    outcome = "returned a model"
except RuntimeError as e:  # caught so that this rank still joins the all_gather below
    lines = str(e).splitlines()
    outcome = "raised RuntimeError: " + next((ln.strip() for ln in lines if "size mismatch" in ln), lines[0])
print(f"rank {rank}: from_pretrained -> {outcome}", flush=True)
outcomes = [None] * dist.get_world_size()
dist.all_gather_object(outcomes, outcome)
differ = len(set(outcomes)) > 1
if rank == 0:
    seen = "; ".join(f"rank {r} {o}" for r, o in enumerate(outcomes))
    print(f"FINDING REPRODUCED: {seen} (expected: the same outcome on every rank)" if differ else "FINDING ABSENT", flush=True)
dist.destroy_process_group()
sys.exit(1 if differ else 0)
