"""Training speed of the default-size refiner (pixel head, 14 condition channels, 128x128) on the
device given, on synthetic clips: seconds per teacher-forcing step for a few batch sizes.
Run by .ci/gpu_check.sh on a lent GPU; also runs on the CPU (device=cpu) for the side-by-side row.

    python .ci/gpu_train_speed.py cuda 2,8,32 20
"""

import json
import sys
import tempfile
import time

import torch

from refine import ModelConfig, TrainConfig
from refine.model import CausalWanRefiner
from refine.testing import synthetic_clips
from refine.train import train

device, batches, steps = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], int(sys.argv[3])
clips = [(torch.cat([c, c], 1), t) for c, t in synthetic_clips(8, 6, 128, 128)]  # 7 -> 14 channels
rows = []
for b in batches:
    torch.manual_seed(0)
    spec = ModelConfig(cond_channels=14, head_channels=16, prediction="sample")
    model = CausalWanRefiner.from_spec(spec)
    times = []
    for n in (1, 2, 2 + steps):  # a warm-up call, then two runs whose difference is `steps` steps
        with tempfile.TemporaryDirectory() as d:
            cfg = TrainConfig(phase1_steps=n, phase2_steps=0, batch_size=b, clip_frames=6, device=device,
                              checkpoint_every=10**6, progress=False)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train(model, clips, cfg, d)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    per_step = (times[2] - times[1]) / steps
    rows.append({"device": device, "batch": b, "s_per_step": round(per_step, 4),
                 "clips_per_s": round(b / per_step, 1)})
    print(json.dumps(rows[-1]), flush=True)
