"""ZeRO-3 from_pretrained(num_labels=4, ignore_mismatched_sizes=True) of a 2-label checkpoint raises a size mismatch."""
import os, tempfile, sys, torch, deepspeed, torch.distributed as dist
from transformers import BertConfig, BertForSequenceClassification
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
rank, path = dist.get_rank(), os.path.join(tempfile.gettempdir(), "num-labels-mismatch-raises")
stage = int(os.environ.get("ZERO_STAGE", 3))
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=32, num_labels=2)
if rank == 0:
    BertForSequenceClassification(config).save_pretrained(path)  # a 2-label checkpoint
dist.barrier()
dschf = HfDeepSpeedConfig(ds_config)  # kept alive: from_pretrained builds the model under zero.Init

expected = "loaded, classifier.weight (4, 32), mismatched: classifier.bias, classifier.weight"
try:
    model, info = BertForSequenceClassification.from_pretrained(
        path, num_labels=4, ignore_mismatched_sizes=True, output_loading_info=True)
    w = model.classifier.weight
    shape = tuple(getattr(w, "ds_shape", w.shape))  # full shape, no collective (another rank may have raised)
    keys = sorted(k if isinstance(k, str) else k[0] for k in info["mismatched_keys"])
    observed = f"loaded, classifier.weight {shape}, mismatched: {', '.join(keys)}"
except Exception as e:  # caught so that this rank still joins the all_gather below
    observed = f"{type(e).__name__}: " + " ".join(line.strip() for line in str(e).splitlines()[:2])
print(f"rank {rank}: from_pretrained -> {observed} (expected: {expected})", flush=True)
outcomes = [None] * dist.get_world_size()
dist.all_gather_object(outcomes, observed)
bad = [f"rank {r}: {o}" for r, o in enumerate(outcomes) if o != expected]
if rank == 0:
    print(f"FINDING REPRODUCED: {bad[0]}" if bad else "FINDING ABSENT", flush=True)
dist.destroy_process_group()
sys.exit(1 if bad else 0)
