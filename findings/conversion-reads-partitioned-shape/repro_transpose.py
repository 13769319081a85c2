# qwen3_vl_moe declares Transpose(1, 2, check_dims=True) for its packed experts: transpose unless the checkpoint tensor
# already has the parameter's shape. Under ZeRO-3 that shape is the empty local shard, so a checkpoint already in
# the model's layout (as save_pretrained writes it) is transposed anyway.
import os, tempfile, sys, traceback, torch, deepspeed, torch.distributed as dist
from transformers import Qwen3VLMoeConfig, Qwen3VLMoeModel
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
stage = int(os.environ.get("ZERO_STAGE", 3))
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
cfg = Qwen3VLMoeConfig(
    text_config=dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=4,
                     num_experts_per_tok=2, pad_token_id=0),
    vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                       num_position_embeddings=16, deepstack_visual_indexes=[0]))
path = os.path.join(tempfile.gettempdir(), "packed-moe-conversion-skipped")
torch.manual_seed(0)
ref = Qwen3VLMoeModel(cfg)  # same seed on every rank: the checkpoint's values
if dist.get_rank() == 0:
    ref.save_pretrained(path)  # 5.17+: experts.down_proj written as the model holds it, (4, 64, 32)
dist.barrier()
dschf = HfDeepSpeedConfig(ds_config)  # keep alive: from_pretrained sees ZeRO-3
err = None
try:
    model = Qwen3VLMoeModel.from_pretrained(path)
except RuntimeError as e:  # the loading report raises on rank 0 only
    f = traceback.extract_tb(e.__traceback__)[-1]
    lines = str(e).splitlines()  # the loading report's second line names the key; other errors are one line
    err = f"{lines[min(1, len(lines) - 1)].strip()} at {f.filename.split('site-packages/')[-1]}:{f.lineno}"
    if "size mismatch" not in str(e):  # another fault came first (5.1.0 unpacks convert()'s dict as a pair)
        print(f"rank {dist.get_rank()}: NO VERDICT, another error first: {err}")
        sys.exit(2)
failed = torch.tensor(int(err is not None))
dist.all_reduce(failed)  # every rank learns whether a rank raised, so none waits in a gather
if failed.item():
    ok, msg = False, err or "another rank raised in from_pretrained"
else:
    down = model.language_model.layers[0].mlp.experts.down_proj
    with deepspeed.zero.GatheredParameters([down]):
        got = down.detach().clone()
    expected = ref.language_model.layers[0].mlp.experts.down_proj
    ok = torch.equal(got, expected)
    msg = f"gathered down_proj {tuple(got.shape)} sum={got.sum():.4f}, checkpoint {tuple(expected.shape)} sum={expected.sum():.4f}"
print(f"rank {dist.get_rank()}: ZeRO stage {stage}: {msg}")
dist.barrier()
dist.destroy_process_group()
print("FINDING ABSENT" if ok else f"FINDING REPRODUCED: {msg}")
sys.exit(0 if ok else 1)
