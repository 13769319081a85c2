"""VideoPrism from_config under ZeRO-3: the text model's init of a grandchild's weight (token_embedding) is lost."""
import os, sys, deepspeed, torch.distributed as dist
from transformers import AutoModel, VideoPrismConfig
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
stage = int(os.environ.get("ZERO_STAGE", 3))
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
dschf = HfDeepSpeedConfig(ds_config)  # kept alive: from_config builds under zero.Init and inits via ZeRO-3 path
text = dict(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
vision = dict(image_size=8, num_frames=2, tubelet_size=(1, 4, 4), hidden_size=16, num_attention_heads=2,
              intermediate_size=32, num_spatial_layers=1, num_temporal_layers=1, num_auxiliary_layers=1)
model = AutoModel.from_config(VideoPrismConfig(text_config=text, vision_config=vision))
# VideoPrismPreTrainedModel._init_weights(VideoPrismTextModel) writes embeddings.token_embedding.weight,
# a grandchild's parameter, with std hidden_size**-0.5 (nn.Embedding's own init has std initializer_range=0.02).
weight = model.text_model.embeddings.token_embedding.weight
with deepspeed.zero.GatheredParameters([weight]):
    std = weight.std().item()
expected = text["hidden_size"] ** -0.5
print(f"rank {dist.get_rank()}: text_model.embeddings.token_embedding.weight std={std:.4f} expected {expected:.4f}", flush=True)
ok = abs(std - expected) < 0.1 * expected
print("FINDING ABSENT" if ok else f"FINDING REPRODUCED: token_embedding std {std:.4f}, expected {expected:.4f}", flush=True)
dist.destroy_process_group()
sys.exit(0 if ok else 1)
