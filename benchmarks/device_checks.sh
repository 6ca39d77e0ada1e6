#!/usr/bin/env bash
# Every GPU check, in one run on a lent GPU machine (its python3 has torch, lightning, torchaudio; the rest
# travels as wheels in .whl/, installed by the caller). Writes everything under $OUT (default runs/device).
#   PYTHONPATH=src:. bash benchmarks/device_checks.sh
# Wheels for the GPU machine's Python 3.12, fetched on the development machine first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl av==18.1.0 jsonargparse==4.53.0 docstring_parser==0.18.0 \
#     typeshed_client==2.15.0
# and installed there first: pip install --no-index --no-deps --target /tmp/site .whl/*.whl
# SMALL=1 runs the same steps at CPU sizes (a dry run of this script on any machine). Files under $OUT:
# log.txt (everything printed), scale.json, loader.json, smoothing.json, fit_{fp32,bf16}_metrics.json, steady.json,
# lipschitz_rounding.txt, sound_certificate.json.
set -uo pipefail
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONPATH=src:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
SMALL=${SMALL:-}
STEPS=${STEPS:-1 2 3 4 5 6 7}  # which of the numbered steps to run, e.g. STEPS="1 5"
runs() { [[ " $STEPS " == *" $1 "* ]]; }
exec > >(tee -a "$OUT/log.txt") 2>&1
step() { echo "=== $(date +%T) $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import os, torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__, '| cpus', os.cpu_count())"

CLIPS=256 && [ -n "$SMALL" ] && CLIPS=16
WORK=/tmp/loader_bench
collect() {  # the JSON files WORK/<glob> as one JSON object keyed by file stem, into OUT/<name>
  python3 -c "import json, pathlib, sys; print(json.dumps({p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob(sys.argv[2]))}, indent=1))" "$WORK" "$1" > "$OUT/$2"
}

if runs 1; then
step "1. bench-scale: step 1 (Lightning vs plain, fp32 vs bf16, channels_last), tau~ loop vs batched, step 2, memory"
SCALE_ARGS=(--paper-sizes) && [ -n "$SMALL" ] && SCALE_ARGS=()
timeout 180 python3 -m benchmarks.scale "${SCALE_ARGS[@]}" --out "$OUT/scale.json" 2>&1 | grep -v Warning
fi

if runs 2; then
step "2. host-to-device copy of one paper-size frame batch (64 x 3 x 3 x 224 x 224), pinned: uint8 vs float32"
timeout 60 python3 - <<'PY' 2>&1
import time, torch
if not torch.cuda.is_available():
    raise SystemExit("no CUDA: skipped")
shape = (64, 3, 3, 224, 224)
for dtype in (torch.uint8, torch.float32):
    host = torch.zeros(shape, dtype=dtype).pin_memory()
    for _ in range(3):
        host.to("cuda", non_blocking=True)
    torch.cuda.synchronize(); start = time.perf_counter()
    for _ in range(20):
        host.to("cuda", non_blocking=True)
    torch.cuda.synchronize(); ms = (time.perf_counter() - start) / 20 * 1e3
    print(f"{str(dtype):14s} {host.numel() * host.element_size() / 2**20:7.1f} MiB  {ms:6.2f} ms per batch")
PY
fi

if runs 3; then
step "3. smoothing: CERTIFY of one clip in every scope (n0 64 + n 500) against one l2-PGD pass, noise on the GPU vs the host"
SMOOTH_ARGS=(--sizes paper --n0 64 --n 500 --draws-per-pass 500 --clips 2 --repeats 2) && [ -n "$SMALL" ] && SMOOTH_ARGS=()
timeout 90 python3 -m benchmarks.smoothing "${SMOOTH_ARGS[@]}" --out "$OUT/smoothing.json" 2>&1 | grep -v Warning
fi

if runs 4; then
step "4. loader at paper input sizes (fake 10 s clips, written by as many processes as workers): decoding, prepare and cache at 16 workers, then the cache at 4 and 1"
LOADER=(python3 -m benchmarks.loader --clips "$CLIPS" --batch 16 --epochs 2 --steps 1 --work-dir "$WORK")
WIDEST=16 && [ -n "$SMALL" ] && WIDEST=2
timeout 120 "${LOADER[@]}" --workers $WIDEST --layout-rounds 0 --out "$WORK/loader_w$WIDEST.json" 2>&1 | grep -v Warning
for workers in 4 1; do
  timeout 45 "${LOADER[@]}" --cache-only --workers "$workers" --out "$WORK/loader_w$workers.json" 2>&1 | grep -v Warning
done
collect 'loader_w*.json' loader.json
fi

if runs 5; then
step "5. make train EXP=crmt_jt on the GPU (embedded data): fp32, then bf16-mixed with channels_last"
FIT=(fit $(python3 -m crmt.experiments crmt_jt) --trainer.logger false)
timeout 120 python3 -m crmt "${FIT[@]}" --trainer.default_root_dir /tmp/fit_fp32 > /tmp/fit_fp32.log 2>&1
timeout 90 python3 -m crmt "${FIT[@]}" --trainer.default_root_dir /tmp/fit_bf16 --trainer.precision bf16-mixed \
  --trainer.callbacks+=crmt.callbacks.ChannelsLast > /tmp/fit_bf16.log 2>&1
for run in fp32 bf16; do
  echo "--- fit $run"; grep -v -i warn "/tmp/fit_$run.log" | tail -n 30
  cp /tmp/fit_$run/report/metrics.json "$OUT/fit_${run}_metrics.json" 2>/dev/null || echo "no metrics for $run"
done
fi

if runs 6; then
step "6. the cache at steady state: 16 workers, 8 passes, workers started every pass vs persistent"
LOADER=(python3 -m benchmarks.loader --clips "$CLIPS" --batch 16 --steps 1 --layout-rounds 0 --work-dir "$WORK")
timeout 90 "${LOADER[@]}" --workers 16 --epochs 1 --cache-only --out "$WORK/prepare.json" > /dev/null 2>&1
for persistent in "" --persistent; do
  timeout 45 "${LOADER[@]}" --cache-only --workers 16 --epochs 8 $persistent --out "$WORK/steady$persistent.json" 2>&1 | grep -v Warning
done
collect 'steady*.json' steady.json
fi
if runs 7; then
step "7. 1-Lipschitz encoders on the GPU, paper sizes: float32 logits (TF32 off, as the report computes them) against float64, TF32 on for contrast; the sound certificate against smoothing of the same clips"
timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/lipschitz_rounding.txt"
import os, torch
from benchmarks.scale import PAPER, TINY
from crmt.robustness.certify import ROUNDING_MARGIN
from crmt.robustness.modes import exact_float32
from crmt.strategies.crmt import CRMTJointTraining
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sizes = TINY if os.environ.get("SMALL") else PAPER
torch.manual_seed(0)
model = CRMTJointTraining(sizes.num_classes, sizes.input_shapes, sizes.encoder_width, encoder="lipschitz").to(device).eval()
inputs = [torch.randn(8, *shape, device=device) for shape in sizes.input_shapes.values()]
with torch.no_grad():
    exact = model.double()([x.double() for x in inputs]).logits
    model.float()
    with exact_float32():
        single = model(inputs).logits
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    tf32 = model(inputs).logits
scale = 1 + exact.abs().amax(dim=1)
for name, logits in (("float32, TF32 off (the report)", single), ("TF32 on", tf32)):
    error = ((logits.double() - exact).abs().amax(dim=1) / scale).max().item()
    print(f"{name:32s} max |logit error| / (1 + max |logit|) = {error:.2e}  ({error / ROUNDING_MARGIN:.3f} x the rounding margin)")
PY
SOUND_ARGS=(--sizes paper --n0 64 --n 1000 --draws-per-pass 200 --clips 2 --repeats 3) && [ -n "$SMALL" ] && SOUND_ARGS=(--n0 4 --n 16 --clips 1)
timeout 240 python3 -m benchmarks.sound_certificate "${SOUND_ARGS[@]}" --out "$OUT/sound_certificate.json" 2>&1 | grep -v Warning
fi

step done
