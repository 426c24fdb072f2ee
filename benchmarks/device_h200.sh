#!/usr/bin/env bash
# The checks a GPU-lent session runs on its borrowed machine, in one call (the device tool of the
# workplace: one short, prepared script; every stage bounded in time; whatever finished comes back).
#
#   OUT=/some/dir DEADLINE_S=520 [STAGES=grid,live_x2,profile,live_x4] bash benchmarks/device_h200.sh
#
# As run on 2026-12-04 through the device tool (pdsim's own dependencies missing there travel as wheels
# in an ignored .whl/ folder: pydantic, pydantic-core, annotated-types, typing-extensions,
# typing-inspection, simpy, for the machine's Python 3.12):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD;
#   OUT=$OUT DEADLINE_S=530 bash benchmarks/device_h200.sh
#
# Stages (each one's log in $OUT/<stage>.log; a failing or timed-out stage does not stop the others):
#   grid:     the live engine's overhead grid at Llama-3.1-8B shapes, bf16 (benchmarks/engine_grid.py)
#   live_x2:  `pdsim live`, 300 requests of the Azure conversation trace at twice its rate
#   profile:  `pdsim profile --device cuda`, Llama-3.1-8B and -70B shard shapes at TP 1/2/4/8, bf16 and
#             fp8, full grid, within the time left (--time-budget-s)
#   live_x4:  the same trace at four times its rate
#   grid_after: the grid again, after the replays (the host's speed drifted on 2026-12-04)
#   flush_read: Llama-3.1-8B TP1 bf16 GEMMs again with `--flush read` (does the written flush's dirty
#             L2 inflate memory-bound GEMMs? docs/latency_accuracy.md), into PROFILE_NAME-readflush
# Then the run directories (results/device/) and the profile are packed into $OUT/device_results.tgz.
# DEVICE=cpu DTYPE=fp32 MODEL=pdsim/data/model_configs/pdsim-tiny-llama.json MAX_REQUESTS=20 runs the
# same stages here, small, to check the script before spending device time.
# On 2026-12-04 the x2 replay outran its 110 s (the engine then used cuDNN attention, 60 ms per decode
# step); the engine's host speed also drifted between the grid and the replays (docs/live.md, "On a
# GPU"): a next session should interleave grid points and replays.
# Needs: torch with CUDA, and pdsim's dependencies importable (PYTHONPATH); run from the repository root.
set -u
OUT=${OUT:?set OUT to the output folder}
DEADLINE_S=${DEADLINE_S:-520}
PROFILE_NAME=${PROFILE_NAME:-h200_sxm-measured}
T0=$(date +%s)
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
mkdir -p "$OUT"
WORK=results/device
mkdir -p "$WORK"
MODEL=${MODEL:-pdsim/data/model_configs/llama-3.1-8b-shapes.json}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu DTYPE=fp32 MODEL=pdsim/data/model_configs/pdsim-tiny-llama.json: a dry run here
DTYPE=${DTYPE:-bf16}
MAX_REQUESTS=${MAX_REQUESTS:-300}
TRACE=traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv
export PYTHONUNBUFFERED=1
STAGES=${STAGES:-grid,live_x2,profile,live_x4,grid_after,flush_read}  # which stages run

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  if [ "$secs" -lt 20 ]; then echo "== $name: skipped, ${secs}s left"; return; fi
  echo "== $name: start (limit ${secs}s, $(left)s left overall)"
  local t=$(date +%s)
  timeout --kill-after=10 "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t ))s"
  tail -n 25 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/nvidia-smi.csv" 2>&1
cat "$OUT/nvidia-smi.csv"
python3 -c "import torch, pdsim.live.engine, profile_tools.runner; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || exit 3

LIVE=(python3 -m pdsim live --device "$DEVICE" --dtype "$DTYPE" --model-config "$MODEL" --trace "$TRACE"
      --max-requests "$MAX_REQUESTS" --max-prompt-tokens 2048 --max-output-tokens 512 --max-num-seqs 64
      --kv-capacity-tokens 131072 --max-num-batched-tokens 8192)

[[ $STAGES == *grid* ]] && stage grid 90 python3 benchmarks/engine_grid.py --device "$DEVICE" --dtype "$DTYPE" --config "$MODEL" \
  --batch-sizes ${GRID_BATCHES:-1,2,4,8,16,32,64} --prompt-lens ${GRID_PROMPTS:-128,512,2048} --output-tokens 33 --out "$WORK/grid"
[[ $STAGES == *live_x2* ]] && stage live_x2 ${LIVE_X2_S:-110} "${LIVE[@]}" --rate-scale 2 --out "$WORK/live_x2"
budget=$(( $(left) - 130 ))
[ "$budget" -gt 240 ] && budget=240
[[ $STAGES == *profile* ]] && stage profile $(( budget + 40 )) python3 -m pdsim profile --device "$DEVICE" --full --out "gpu_profiles/$PROFILE_NAME" \
  ${PROFILE_ARGS:---models Llama-3.1-8B,Llama-3.1-70B --tp 1,2,4,8 --dtypes bf16,fp8} --time-budget-s "$budget" \
  --note "measured in a borrowed-machine session with a ${budget} s budget (benchmarks/device_h200.sh); points the budget cut are counted below"
[[ $STAGES == *live_x4* ]] && stage live_x4 ${LIVE_X4_S:-150} "${LIVE[@]}" --rate-scale 4 --out "$WORK/live_x4"

[[ $STAGES == *grid_after* ]] && stage grid_after 90 python3 benchmarks/engine_grid.py --device "$DEVICE" --dtype "$DTYPE" \
  --config "$MODEL" --batch-sizes ${GRID_BATCHES:-1,2,4,8,16,32,64} --prompt-lens ${GRID_PROMPTS:-128,512,2048} \
  --output-tokens 33 --out "$WORK/grid_after"
[[ $STAGES == *flush_read* ]] && stage flush_read $(( $(left) - 10 )) python3 -m pdsim profile --device "$DEVICE" --full \
  --tables gemm --models Llama-3.1-8B --tp 1 --dtypes "$DTYPE" --flush read --time-budget-s 60 \
  --out "gpu_profiles/$PROFILE_NAME-readflush"

tar czf "$OUT/device_results.tgz" "$WORK" gpu_profiles/"$PROFILE_NAME"* 2>/dev/null
ls -la "$OUT"
echo "== done in $(( $(date +%s) - T0 ))s"
