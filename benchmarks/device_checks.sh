#!/usr/bin/env bash
# GPU checks, run once on a lent GPU machine (no install there: its python3 has torch and lightning;
# PyAV travels as a wheel in .whl/). Writes everything under $OUT (default runs/device).
#   PYTHONPATH=src:. bash benchmarks/device_checks.sh
# The PyAV wheel for the GPU machine's Python 3.12, fetched on the development machine first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl av==18.1.0
# and installed there before this script: pip install --no-index --no-deps --target /tmp/site .whl/*.whl
set -uo pipefail
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONPATH=src:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import os, torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__, '| cpus', os.cpu_count())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 1. make bench-scale --paper-sizes: step 1 (Lightning vs plain loop, fp32 vs bf16), tau~ loop vs batched, step 2 vs step 1, memory
timeout 330 python3 -m benchmarks.scale --paper-sizes --out "$OUT/scale.json" 2>&1 | grep -v Warning | tee "$OUT/scale.log"

# 2. the per-clip cache read by 4, 8 and 16 DataLoader workers at paper input sizes (fake 10 s clips, made in parallel)
WORK=/tmp/loader_bench
python3 - <<'PY'
from multiprocessing import Pool
from pathlib import Path
from benchmarks.loader import fake_clip
from data_modules.encoding import write_mp4
media = Path("/tmp/loader_bench/media"); media.mkdir(parents=True, exist_ok=True)
def make(index):
    name = f"bench{index:06d}_000000_000010"
    video, audio = fake_clip(index, 10.0, fps=25, rate=44100)
    write_mp4(media / f"{name}.mp4", video=video, audio=audio, fps=25, audio_rate=44100)
    return f"{name} {index % 31}"
with Pool(16) as pool:
    lines = pool.map(make, range(128))
Path("/tmp/loader_bench/ks_train.txt").write_text("\n".join(lines) + "\n")
PY
for workers in 4 8 16; do
  timeout 150 python3 -m benchmarks.loader --clips 128 --workers "$workers" --batch 8 --epochs 2 --steps 1 \
    --work-dir "$WORK" --out "$OUT/loader_w$workers.json" 2>&1 | grep -v Warning | tee -a "$OUT/loader.log"
done
