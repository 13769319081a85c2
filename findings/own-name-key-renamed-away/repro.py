# deepseek_v4's conversion mapping renames r"\.norm\." to ".kv_norm." (meant for attention compressor norms); it also
# matches DeepseekV4ForCausalLM's own final norm, model.norm.weight. The regular loader keeps a key the model already
# owns; the ZeRO-3 loader drops the renamed key, so model.norm.weight silently keeps its init (ones).
import os, tempfile, sys, torch, deepspeed, torch.distributed as dist
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
stage = int(os.environ.get("ZERO_STAGE", 3))
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
cfg = DeepseekV4Config(vocab_size=64, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=4, head_dim=16, q_lora_rank=16, n_routed_experts=4, num_experts_per_tok=2,
                       layer_types=["heavily_compressed_attention"], mlp_layer_types=["hash_moe"],
                       sliding_window=64, index_head_dim=16, qk_rope_head_dim=2)
path = os.path.join(tempfile.gettempdir(), "own-name-key-renamed-away")
torch.manual_seed(0)
ref = DeepseekV4ForCausalLM(cfg)  # same seed on every rank: the checkpoint's values
with torch.no_grad():
    ref.model.norm.weight.uniform_(0.5, 1.5)  # so a loaded value differs from the init (ones)
if dist.get_rank() == 0:
    ref.save_pretrained(path)
dist.barrier()
dschf = HfDeepSpeedConfig(ds_config)  # keep alive: from_pretrained sees ZeRO-3
model = DeepseekV4ForCausalLM.from_pretrained(path)
norm = model.model.norm.weight
with deepspeed.zero.GatheredParameters([norm]):
    got = norm.detach().clone()
expected = ref.model.norm.weight
ok = torch.equal(got, expected)
msg = f"gathered model.norm.weight[:3]={got[:3].tolist()}, checkpoint {[round(v, 4) for v in expected[:3].tolist()]}"
print(f"rank {dist.get_rank()}: ZeRO stage {stage}: {msg}")
dist.barrier()
dist.destroy_process_group()
print("FINDING ABSENT" if ok else f"FINDING REPRODUCED: {msg}")
sys.exit(0 if ok else 1)
