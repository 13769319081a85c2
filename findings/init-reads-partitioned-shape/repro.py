"""ZeRO-3 from_pretrained of WhisperModel: init reads the partitioned (empty) embed_positions shape."""
import os, tempfile, sys, traceback, torch, deepspeed, torch.distributed as dist
from transformers import WhisperConfig, WhisperModel
from transformers.integrations import HfDeepSpeedConfig

deepspeed.init_distributed(dist_backend="gloo")
rank, path = dist.get_rank(), os.path.join(tempfile.gettempdir(), "init-reads-partitioned-shape")
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
config = WhisperConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
                       max_source_positions=16, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2, decoder_start_token_id=1)
ref = WhisperModel(config)  # built before HfDeepSpeedConfig exists: a plain, unpartitioned model
if rank == 0:
    ref.save_pretrained(path)
dist.barrier()
dschf = HfDeepSpeedConfig(ds_config)  # kept alive: from_pretrained now builds the model under zero.Init

expected = "loaded, encoder.embed_positions.weight (16, 16) equal to the checkpoint: True"
try:
    model = WhisperModel.from_pretrained(path)
    w = model.encoder.embed_positions.weight
    with deepspeed.zero.GatheredParameters([w]):
        same = torch.equal(w, ref.encoder.embed_positions.weight)
        observed = f"loaded, encoder.embed_positions.weight {tuple(w.shape)} equal to the checkpoint: {same}"
except Exception as e:
    f = traceback.extract_tb(e.__traceback__)[-1]
    observed = f"{type(e).__name__}: {e} at {f.filename.split('site-packages/')[-1]}:{f.lineno}"
print(f"rank {rank}: from_pretrained -> {observed} (expected: {expected})", flush=True)
outcomes = [None] * dist.get_world_size()
dist.all_gather_object(outcomes, observed)
ok = all(o == expected for o in outcomes)
if rank == 0:
    print("FINDING ABSENT" if ok else f"FINDING REPRODUCED: {outcomes[0]}", flush=True)
dist.destroy_process_group()
sys.exit(0 if ok else 1)
