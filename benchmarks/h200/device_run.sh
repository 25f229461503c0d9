#!/bin/bash
# The GPU measurements of one device call (see NOTES.md), from the repository
# root on the GPU machine, with the higher wheel in .whl/:
#   bash benchmarks/h200/device_run.sh $OUT
# Stages in order of priority, each cut short by a shared deadline
# (DEADLINE_S, default 560 s) so that the JSONs reach $OUT in time.
set -u
out=$1
export PYTHONUNBUFFERED=1
deadline=${DEADLINE_S:-560}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:.
res=/tmp/res; mkdir -p $res
stage() { echo "=== [$SECONDS s] $*"; }
bench() {  # name cap configs extra-flags...
  local name=$1 cap=$2 configs=$3; shift 3
  local t=$((deadline - SECONDS)); [ $t -gt $cap ] && t=$cap
  if [ $t -lt 40 ]; then stage "skip $name: $t s left"; return; fi
  stage "benchmark $configs (limit $t s)"
  timeout $t python3 -m experiments.benchmark --configs=$configs \
    --timing_precision=default --out=$res/$name "$@" 2>&1 \
    | grep -v '^[IW][0-9]'
  cp $res/$name/benchmark.json $out/$name.json 2>/dev/null
}
{
stage env
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c 'import jax, torch; print(jax.__version__, jax.devices(), torch.__version__, torch.version.cuda, torch.backends.cudnn.version())'
bench g5 240 omniglot_5w1s --max_seconds_per_row=8
bench gm 150 miniimagenet_5w1s --max_seconds_per_row=6
bench g20 170 omniglot_20w1s --max_seconds_per_row=6
t=$((deadline - SECONDS))
if [ $t -ge 70 ]; then
  stage "probe patches_cf vs patches_cf_2pass, kernel profile (limit $t s)"
  PROBE_VARIANTS=1,7 PROBE_ROUNDS=15 timeout $t python3 \
    benchmarks/h200/gpu_probe.py $out 2>&1 | grep -v '^[IW][0-9]'
fi
t=$((deadline - SECONDS))
if [ $t -ge 50 ]; then
  stage "probe patches_cf without command buffers (limit $t s)"
  XLA_FLAGS=--xla_gpu_enable_command_buffer= PROBE_VARIANTS=1 \
    PROBE_ROUNDS=15 PROBE_PROFILE=0 timeout $t python3 \
    benchmarks/h200/gpu_probe.py /tmp/nocb 2>&1 | grep -v '^[IW][0-9]'
fi
stage done
} 2>&1 | tee $out/run.log
tar czf $out/res.tgz -C $res . 2>/dev/null
