#!/usr/bin/env bash
# On the GPU machine (Python 3.12 with torch and CUDA, no package registry): install the wheels
# benchmarks/gpu_wheels.sh fetched, run the CUDA tests and the throughput benchmark at 512x512
# with JPEG in and out, and print the table.
#
#   bash benchmarks/gpu.sh stash   # every call but the last: keep the carried group of wheels
#   bash benchmarks/gpu.sh         # the last call: join, check, install, test, measure
#   bash benchmarks/gpu.sh check   # join and check the wheels only (also works here)
#
# Each call carries one group (.whl/1, .whl/2, ...; gpu_wheels.sh prints the calls); they are
# gathered in $ADAIN_WHEELS, which outlives a call while the machine stays warm. Packages are
# installed beside the machine's own (pip --target, first on PYTHONPATH), so its torch is used:
# its python3 is itself a venv's, and a venv made from it with --system-site-packages would see
# the base interpreter's packages, not that venv's torch.
# Sizes: IMAGES (20000, of which DISTINCT 500 generated, the rest links), BATCH (32), BASELINE
# (200 images through the reference loop); EXTRA: more throughput.py flags (--compile, --actors 2).
# Logs go to $OUT when it is set. The run keeps within one 600 s call (tests 150 s, benchmark 360 s).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
CARRIED=${ADAIN_CARRIED:-.whl}
WHEELS=${ADAIN_WHEELS:-/tmp/adain-wheels}
SITE=${ADAIN_SITE:-/tmp/adain-site}
LOGS=${OUT:-/tmp/adain-gpu-logs}
PYTHON=${PYTHON:-python3}
IMAGES=${IMAGES:-20000} DISTINCT=${DISTINCT:-500} BATCH=${BATCH:-32} BASELINE=${BASELINE:-200} EXTRA=${EXTRA:-}

stash() {
    mkdir -p "$WHEELS"
    local group found=0
    for group in "$CARRIED"/*/; do
        [ -f "$group/SHA256SUMS" ] || continue
        cp -f "$group"* "$WHEELS"/ && found=1
    done
    [ "$found" = 1 ] || { echo "gpu.sh: no group of wheels carried ($CARRIED/N): run benchmarks/gpu_wheels.sh first"; return 1; }
    local files=("$WHEELS"/*.whl*)
    echo "wheels gathered in $WHEELS: ${#files[@]} files"
}

join_and_check() {
    (
        cd "$WHEELS" || exit 1
        for first in *.whl.part00; do
            [ -e "$first" ] && cat "${first%.part00}".part* >"${first%.part00}"
        done
        if ! sha256sum --quiet -c SHA256SUMS; then
            echo "gpu.sh: wheels missing or broken in $WHEELS: carry every group of gpu_wheels.sh, one call after the other"
            exit 1
        fi
    )
}

stash || exit 1
case "${1:-run}" in
    stash) exit 0 ;;
    check) join_and_check; exit ;;
    run) join_and_check || exit 1 ;;
    *) echo "usage: bash benchmarks/gpu.sh [stash|check]"; exit 2 ;;
esac

mkdir -p "$LOGS"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || exit 1
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
# TorchCodec's nvJPEG needs CUDA's runtime and NVRTC: torch's pip packages of them, made findable.
cuda_libs=$("$PYTHON" -c 'import glob, site
print(":".join(sorted({p for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/**/lib", recursive=True)})))')
export LD_LIBRARY_PATH="$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

"$PYTHON" - <<'EOF' | tee "$LOGS/device.txt" || echo "gpu.sh: the device check above failed; going on to see what else does"
import torch, torchcodec, ray
from torchcodec.decoders import decode_jpeg
from torchcodec.encoders import JpegEncoder
image = torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8, device="cuda")
data = JpegEncoder(image).to_tensor(quality=90).cpu()
assert decode_jpeg([data, data], device="cuda")[0].is_cuda  # nvJPEG both ways
print(f"{torch.cuda.get_device_name()}: torch {torch.__version__}, torchcodec {torchcodec.__version__}, ray {ray.__version__}")
EOF

echo "== CUDA tests"
timeout 150 "$PYTHON" -m pytest -q -rs -m cuda -p no:cacheprovider tests 2>&1 | tee "$LOGS/tests.log"
tests=$(grep -E "^=*.*(passed|failed|error).* in [0-9.]+s" "$LOGS/tests.log" | tail -1 | tr -d '=')

echo "== throughput, $IMAGES images 512x512, JPEG in and out, coded on the GPU"
read -ra extra <<<"$EXTRA"
timeout 360 "$PYTHON" benchmarks/throughput.py --device cuda --size 512 --precision bf16 --jpeg-codec model \
    --images "$IMAGES" --distinct "$DISTINCT" --batch-size "$BATCH" --baseline-images "$BASELINE" "${extra[@]}" 2>&1 |
    tee "$LOGS/throughput.log"

echo
echo "== adain-ray on $(cat "$LOGS/device.txt")"
echo "CUDA tests:${tests:- none ran, see $LOGS/tests.log}"
sed -n '/^[0-9]* images /,/^speedup/p' "$LOGS/throughput.log"
