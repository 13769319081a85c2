"""RTDetrModel from_config under ZeRO-3: replace_batch_norm copies already-partitioned BatchNorm2d weights in __init__."""
import os, sys, traceback, deepspeed, torch.distributed as dist
from transformers import AutoModel, RTDetrConfig, RTDetrResNetConfig
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
stage = int(os.environ.get("ZERO_STAGE", 3))
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
dschf = HfDeepSpeedConfig(ds_config)  # kept alive: from_config builds under zero.Init through it
backbone = RTDetrResNetConfig(embeddings_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                              out_features=["stage2", "stage3", "stage4"])
config = RTDetrConfig(backbone_config=backbone, encoder_hidden_dim=16, encoder_in_channels=[16, 24, 32],
                      encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16, decoder_in_channels=[16, 16, 16],
                      decoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, num_queries=10)
rank = dist.get_rank()
try:
    model = AutoModel.from_config(config)  # freeze_backbone_batch_norms=True (default) -> replace_batch_norm
    frozen = [m for m in model.modules() if type(m).__name__ == "RTDetrFrozenBatchNorm2d"]
    print(f"rank {rank}: built {type(model).__name__} with {len(frozen)} frozen batch norms; expected: built")
    ok, why = True, ""
except RuntimeError as e:
    f = traceback.extract_tb(e.__traceback__)[-1]
    where = f"{f.filename.split('site-packages/')[-1]}:{f.lineno} ({f.line})"
    print(f"rank {rank}: from_config raised {e} at {where}; expected: built")
    ok, why = False, f"from_config raised {e} at {where}"
print("FINDING ABSENT" if ok else f"FINDING REPRODUCED: {why}")
dist.destroy_process_group()
sys.exit(0 if ok else 1)
