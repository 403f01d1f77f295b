#!/usr/bin/env bash
# The GPU checks, for a session that is lent a CUDA machine (CI has none and never runs this).
# The machine's image has torch but not gsplat / diffusers / hydra: bring them as wheels in .whl/
# (pip download --no-deps ... gsplat==1.5.3 diffusers==0.42.1 importlib_metadata==8.7.0
# hydra-core==1.3.2 omegaconf==2.3.0) and antlr4 (sdist only) copied from a venv into
# .devcheck/site/, then run this from the repo root. Every section has its own time limit, so one
# hang costs that section only. Writes logs and bench reports under ${OUT:-gpu_check}/.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
T0=$(date +%s); stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.devcheck/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/machine.txt"
python3 -c "import torch, diffusers, gsplat, hydra; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'gsplat', gsplat.__version__)" 2>&1 | tee -a "$OUT/machine.txt"
# gsplat compiles its CUDA kernels on first use: build in the background while the refiner runs
(export MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}; s=$(date +%s)
 timeout "${GSPLAT_BUILD_S:-330}" python3 -c "from gsplat.cuda._backend import _C; print('gsplat built:', _C is not None)"
 echo "rc=$? build_s=$(( $(date +%s) - s ))") > "$OUT/gsplat_build.log" 2>&1 &
build=$!
stamp "refine tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_refine_cuda.py tests/test_refine_cache.py \
  tests/test_refine_sampler.py tests/test_refine_bench.py tests/test_refine_train.py 2>&1 \
  | tee "$OUT/refine_tests.log" | tail -3
bench() {  # bench <name> <limit s> <key=value ...>: the refine section of hybridsim bench on CUDA
  local n=$1 lim=$2; shift 2
  timeout "$lim" python3 -m hybridsim.cli bench sections=refine device=cuda "$@" out="$OUT/bench_$n" \
    > "$OUT/bench_$n.log" 2>&1 || { echo "bench $n failed or timed out:"; tail -3 "$OUT/bench_$n.log"; }
}
stamp "bench fp32 b1"; bench fp32_b1 90 dtype=float32 batch=1
stamp "bench bf16 b16"; bench bf16_b16 90 dtype=bfloat16 batch=16
stamp "train speed"
timeout 60 python3 .ci/gpu_train_speed.py cuda 2,8,32 10 2>&1 | tee "$OUT/train_speed.log" | grep -v Warning
stamp "waiting for the gsplat build"
wait $build; tail -2 "$OUT/gsplat_build.log"
stamp "render tests"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_render_raster.py 2>&1 | tee "$OUT/render_tests.log" | tail -3
stamp "bench bf16 b1 / fp32 b16"
bench bf16_b1 60 dtype=bfloat16 batch=1
bench fp32_b16 60 dtype=float32 batch=16
grep -h "frames/s" "$OUT"/bench_*/report.md
stamp done
