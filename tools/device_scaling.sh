#!/usr/bin/env bash
# Thread scaling on a many-core machine (used on the device tool's 16-core
# hosts): builds the kernels in place with setup.py, runs the thread tests,
# then the comparison CLI at 1..16 threads (`all`, the default; `grad`: the
# gradients at 16 threads only) and the 1x1 gradient experiment
# (tools/device_1x1.py; `onebyone` runs only that).
# Writes logs under $OUT (or ./out).
# Benchmarks run with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (this
# command only), as the developers' guide asks.
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
PY=${PY:-python3}
{ nproc; lscpu; } > "$OUT/machine.txt" 2>&1
$PY -c "import numpy, scipy, Cython, threadpoolctl; print(numpy.__version__, scipy.__version__, Cython.__version__)"
$PY setup.py build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
$PY -c "import fastim2col; fastim2col.show_config()" > "$OUT/config.json" 2>&1
grep -E '"(isa|direct_kernels_isa|architecture|num_threads|version)"' "$OUT/config.json" | head -12
timeout 120 $PY -m pytest -q -x -p no:cacheprovider tests/test_threads.py tests/test_direct.py 2>&1 | tail -2
MODE=${1:-all}
LAYERS=resnet_3x3_56,resnet_3x3_14,resnet_3x3_7,resnet_1x1_56
[ "$MODE" = all ] && for t in 1 2 4 8 16; do
  $PY -P -m fastim2col bench --threads $t --batch 16 --layers $LAYERS --rounds 2 \
    --compare torch 2>&1 | tee -a "$OUT/conv2d_scaling.txt" | tail -3
done
[ "$MODE" != onebyone ] && for op in conv2d_input conv2d_weight; do
  $PY -P -m fastim2col bench --threads 16 --batch 16 --layers $LAYERS --rounds 2 --op $op \
    --compare torch 2>&1 | tee -a "$OUT/grad_16.txt" | tail -2
done
[ "$MODE" = all ] && $PY -P -m fastim2col bench --threads 16 --batch 16 --layers $LAYERS \
  --rounds 2 --dtype float64 --compare torch 2>&1 | tee -a "$OUT/conv2d_f64_16.txt" | tail -2
# 1x1 gradients at 16 threads, with variants (tools/device_1x1.py)
$PY -P tools/device_1x1.py 16 2>&1 | tee "$OUT/onebyone.txt"
OPENBLAS_NUM_THREADS=1 $PY -P tools/device_1x1.py 16 2>&1 | tee "$OUT/onebyone_blas1.txt"
