# Molmo2TextModel's checkpoint stores q/k/v fused as self_attn.att_proj; transformers 5.24 splits it on load with
# Split(dim=0), whose sizes come from model.get_parameter(target).shape: under ZeRO-3 that is the empty local shard.
import os, tempfile, sys, traceback, torch, deepspeed, torch.distributed as dist
from transformers import Molmo2TextConfig, Molmo2TextModel
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
stage = int(os.environ.get("ZERO_STAGE", 3))
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
cfg = Molmo2TextConfig(vocab_size=64, additional_vocab_size=0, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
path = os.path.join(tempfile.gettempdir(), "fused-conversion-split-fails")
torch.manual_seed(0)
ref = Molmo2TextModel(cfg)  # same seed on every rank: the checkpoint's values
if dist.get_rank() == 0:
    ref.save_pretrained(path)  # writes the fused layers.0.self_attn.att_proj.weight
dist.barrier()
dschf = HfDeepSpeedConfig(ds_config)  # keep alive: from_pretrained sees ZeRO-3
try:
    model = Molmo2TextModel.from_pretrained(path)
    k_proj = model.layers[0].self_attn.k_proj.weight
    with deepspeed.zero.GatheredParameters([k_proj]):
        got = k_proj.detach().clone()
    expected = ref.layers[0].self_attn.k_proj.weight
    ok = torch.equal(got, expected)
    msg = f"gathered k_proj {tuple(got.shape)} sum={got.sum():.4f}, checkpoint {tuple(expected.shape)} sum={expected.sum():.4f}"
except RuntimeError as e:
    f = traceback.extract_tb(e.__traceback__)[-1]
    ok, msg = False, f"{e} at {f.filename.split('site-packages/')[-1]}:{f.lineno}"
print(f"rank {dist.get_rank()}: ZeRO stage {stage}: {msg}")
dist.barrier()
dist.destroy_process_group()
print("FINDING ABSENT" if ok else f"FINDING REPRODUCED: {msg}")
sys.exit(0 if ok else 1)
