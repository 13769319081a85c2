"""ZeRO-3 zero.Init cannot partition a 0-dim nn.Parameter (CLIP's logit_scale)."""
import sys, traceback, torch, deepspeed, torch.distributed as dist

deepspeed.init_distributed(dist_backend="gloo")
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.6592))  # 0-dim, as in CLIPModel


try:
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        m = M()
    with deepspeed.zero.GatheredParameters(list(m.parameters())):
        value = m.logit_scale.item()
    print(f"rank {dist.get_rank()}: gathered logit_scale={value:.4f} expected 2.6592")
    ok, why = abs(value - 2.6592) < 1e-4, f"gathered {value:.4f}, expected 2.6592"
except RuntimeError as e:
    f = traceback.extract_tb(e.__traceback__)[-1]
    where = f"{f.filename.split('site-packages/')[-1]}:{f.lineno}"
    print(f"rank {dist.get_rank()}: raised {e} at {where}")
    ok, why = False, f"zero.Init raised {e} at {where}"
print("FINDING ABSENT" if ok else f"FINDING REPRODUCED: {why}")
dist.destroy_process_group()
sys.exit(0 if ok else 1)
