"""The causal refiner at Wan2.1-1.3B size on a GPU: how the cached transformer alone compares with
the published physics-conditioned refiners (DESIGN.md section 7). Random weights (speed does not
depend on them), bf16 autocast.

Shape: dim 1536 (12 heads x 128), FFN 8960, 30 layers = Wan2.1-T2V-1.3B's transformer; a 480x832
video through Wan's VAE is 60x104 latents per latent frame (8x spatial) and 4 video frames per
latent frame; patch 2 -> 1,560 tokens per latent frame. Blocks of 3 latent frames, 1 sink + 20
window frames (RealWonder's 21-frame attention window), 4 denoising steps + the clean pass.
The model is built with 3 output channels so that refine.Refiner drives it; Wan's 16 latent
channels change only the patch embedding and the output layer (<0.1 % of the FLOPs). Not
measured: the VAE decode, the text encoder (none: the refiner has no prompt), and any weights.

    python .ci/gpu_scale_bench.py                 # the 1.3B shape on CUDA, bf16
    python .ci/gpu_scale_bench.py cpu float32 tiny  # a smoke run of the script itself
"""

import json
import sys
import time

import torch

from refine import SamplerConfig
from refine.bench import bench_throughput, estimate_flops
from refine.model import CausalWanRefiner

device, dtype = (sys.argv[1:3] + ["cuda", "bfloat16"][len(sys.argv[1:3]):])
shape = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, sample_height=60,
             sample_width=104)
if sys.argv[3:] == ["tiny"]:
    shape = dict(num_attention_heads=1, attention_head_dim=32, ffn_dim=64, num_layers=1, sample_height=8,
                 sample_width=8)
torch.manual_seed(0)
t0 = time.perf_counter()
with torch.device(device):
    model = CausalWanRefiner(patch_size=2, frames_per_block=3, sink_frames=1, window_frames=20, **shape)
params = sum(p.numel() for p in model.parameters())
sampler = SamplerConfig(sigmas=(1.0, 0.9375, 0.8333, 0.625), noise="fresh")  # Self-Forcing's 4 steps
est = estimate_flops(model.spec, sampler)
print(f"built {params / 1e9:.3f} B params in {time.perf_counter() - t0:.1f} s; "
      f"{est.tokens_per_frame} tokens per latent frame, {est.flops_per_frame / 1e12:.2f} TFLOP per latent frame",
      flush=True)
res = bench_throughput(model, sampler, batch_size=1, blocks=6, device=device, dtype=dtype)
out = {"params": params, "latent_frames_per_s": res.frames_per_s, "video_frames_per_s": 4 * res.frames_per_s,
       "block_latency_ms_median": res.block_latency_ms, "achieved_tflops": res.achieved_gflops / 1e3,
       "matmul_tflops": res.matmul_gflops / 1e3, "fraction_of_matmul": res.fraction_of_matmul,
       "cuda_max_allocated_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None}
print(json.dumps(out, indent=1))
