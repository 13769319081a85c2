"""HubertModel from_config under ZeRO-3: its _init_weights opens a GatheredParameters nested in transformers' own."""
import os, sys, datetime, torch, deepspeed, torch.distributed as dist
from transformers import AutoModel, HubertConfig
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=60))
stage = int(os.environ.get("ZERO_STAGE", 3))
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
dschf = HfDeepSpeedConfig(ds_config)  # kept alive: from_config sees ZeRO-3 through it
config = HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                      conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
rank = dist.get_rank()
torch.manual_seed(0)
try:
    model = AutoModel.from_config(config)
    conv = model.feature_extractor.conv_layers[0].conv  # Conv1d(1, 16, 10): kaiming_normal_ in _init_weights
    with deepspeed.zero.GatheredParameters([conv.weight]):
        std, expected = conv.weight.std().item(), (2 / (conv.in_channels * conv.kernel_size[0])) ** 0.5
    print(f"rank {rank}: built; conv_layers.0 weight std={std:.3f} expected kaiming {expected:.3f}")
    ok, why = abs(std - expected) < 0.3 * expected, f"conv weight std {std:.3f}, expected {expected:.3f}"
except RuntimeError as e:  # the nested context runs on rank 0 only; rank 1 then fails in its next collective
    msg = str(e).splitlines()[0][:120]
    print(f"rank {rank}: from_config raised {msg}")
    ok, why = False, f"from_config raised {msg}"
print("FINDING ABSENT" if ok else f"FINDING REPRODUCED: {why}")
dist.destroy_process_group()
sys.exit(0 if ok else 1)
