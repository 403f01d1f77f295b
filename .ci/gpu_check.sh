#!/usr/bin/env bash
# The GPU checks, for a session that is lent a CUDA machine (CI has none and never runs this).
# The machine's image has torch but not gsplat / diffusers / hydra: bring them as wheels in .whl/
# (pip download --no-deps ... gsplat==1.5.3 diffusers==0.42.1 importlib_metadata) and the pure-Python
# hydra, omegaconf and antlr4 packages in .devcheck/site/, then run this from the repo root.
# Writes logs and bench reports under ${OUT:-gpu_check}/.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.devcheck/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/machine.txt"
# gsplat compiles its CUDA kernels on first use: build in the background while the refiner runs
(export MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}; s=$(date +%s)
 timeout 420 python3 -c "from gsplat.cuda._backend import _C; print('gsplat built:', _C is not None)"
 echo "rc=$? build_s=$(( $(date +%s) - s ))") > "$OUT/gsplat_build.log" 2>&1 &
build=$!
python3 -m pytest -q -p no:cacheprovider tests/test_refine_cuda.py tests/test_refine_cache.py tests/test_refine_sampler.py \
  tests/test_refine_bench.py tests/test_refine_train.py 2>&1 | tee "$OUT/refine_tests.log" | tail -3
for a in "dtype=float32 batch=1" "dtype=bfloat16 batch=1" "dtype=float32 batch=16" "dtype=bfloat16 batch=64"; do
  n=$(echo "$a" | tr ' =' '__')
  timeout 150 python3 -m hybridsim.cli bench sections=refine device=cuda $a out="$OUT/bench_$n" > "$OUT/bench_$n.log" 2>&1 \
    || tail -3 "$OUT/bench_$n.log"
done
grep -h "frames/s" "$OUT"/bench_*/report.md
wait $build; tail -2 "$OUT/gsplat_build.log"
python3 -m pytest -q -p no:cacheprovider tests/test_render_raster.py 2>&1 | tee "$OUT/render_tests.log" | tail -3
