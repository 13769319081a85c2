"""ZeRO-3 resize_token_embeddings on RoBERTa: the tied head bias keeps its old partition, the forward fails."""
import os, tempfile, sys, traceback, torch, deepspeed, torch.distributed as dist
from transformers import RobertaConfig, RobertaForMaskedLM
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
rank, path = dist.get_rank(), os.path.join(tempfile.gettempdir(), "resized-head-bias-keeps-old-partition")
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": int(os.environ.get("ZERO_STAGE", 3))}}
config = RobertaConfig(vocab_size=131, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=40)
if rank == 0:
    RobertaForMaskedLM(config).save_pretrained(path)
dist.barrier()
dschf = HfDeepSpeedConfig(ds_config)  # kept alive: from_pretrained builds the model under zero.Init
model = RobertaForMaskedLM.from_pretrained(path)  # lm_head.decoder.bias is lm_head.bias (one parameter)
model.resize_token_embeddings(131 + 5)
engine, *_ = deepspeed.initialize(model=model, config=ds_config)
bias = model.lm_head.bias
print(f"rank {rank}: lm_head.bias ds_shape {tuple(getattr(bias, 'ds_shape', bias.shape))}, "
      f"local numel {bias.numel()}, word_embeddings rows {model.get_input_embeddings().num_embeddings}", flush=True)

expected = "logits (1, 4, 136)"
try:
    logits = engine(input_ids=torch.tensor([[0, 7, 134, 2]])).logits  # 134 is one of the added tokens
    observed = f"logits {tuple(logits.shape)}"
except RuntimeError as e:
    f = traceback.extract_tb(e.__traceback__)[-1]
    observed = f"RuntimeError: {e} at {f.filename.split('site-packages/')[-1]}:{f.lineno}"
print(f"rank {rank}: forward -> {observed} (expected: {expected})", flush=True)
outcomes = [None] * dist.get_world_size()
dist.all_gather_object(outcomes, observed)
bad = [f"rank {r}: {o}" for r, o in enumerate(outcomes) if o != expected]
if rank == 0:
    print(f"FINDING REPRODUCED: {bad[0]}" if bad else "FINDING ABSENT", flush=True)
dist.destroy_process_group()
sys.exit(1 if bad else 0)
