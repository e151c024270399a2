#!/usr/bin/env bash
# Here, on a machine with the package registry: the cp312 x86-64 wheels that benchmarks/gpu.sh
# installs on the GPU machine (Python 3.12 with torch, no registry), in groups to carry one per call.
#
#   bash benchmarks/gpu_wheels.sh [DEST]     # DEST defaults to .whl (ignored by git)
#
# Versions: those of the active Python environment (the project's venv), else the pins below.
# Wheels the GPU machine's image already holds are left out. Ray's wheel is larger than what one
# call may carry, so it is cut in two parts (gpu.sh joins them and checks SHA256SUMS), and all
# the files are packed into DEST/1, DEST/2, ... of at most BUDGET_MIB each.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYTHON=${PYTHON:-python3}
BUDGET_MIB=${BUDGET_MIB:-60}  # per call: 64 MiB less the working tree and some room

version() {  # the active environment's version of $1, else $2
    "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || echo "$2"
}
RAY=$(version ray 2.60.0)
MOTO=$(version moto 5.2.5)
BOTO3=$(version boto3 1.44.8)
TORCHCODEC=$(version torchcodec 0.17.0)
TORCHCODEC=${TORCHCODEC%%+*}  # a local build (0.17.0+cu130) is the registry's 0.17.0, CUDA-enabled on Linux

# In the GPU machine's image already (its package list): not carried.
PRESENT="attrs certifi charset-normalizer click filelock fsspec idna jinja2 markupsafe msgpack numpy packaging
pandas pillow protobuf pyarrow python-dateutil pyyaml requests six typing-extensions urllib3 werkzeug pytest
hypothesis tqdm psutil aiohttp aiosignal frozenlist yarl multidict propcache attrs"

rm -rf "$DEST"
mkdir -p "$DEST/all"
"$PYTHON" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST/all" \
    "ray[data,train]==$RAY" "moto[s3]==$MOTO" "boto3==$BOTO3" flask flask-cors "torchcodec==$TORCHCODEC"

cd "$DEST/all"
for wheel in *.whl; do
    name=$(echo "${wheel%%-[0-9]*}" | tr '[:upper:]_.' '[:lower:]--')
    if [[ " ${PRESENT//$'\n'/ } " == *" $name "* ]]; then rm "$wheel"; fi
done
sha256sum ./*.whl >SHA256SUMS
for wheel in ray-*.whl; do split -n 2 -d "$wheel" "$wheel.part" && rm "$wheel"; done

# Largest first, each file into the group with the most room left.
"$PYTHON" - "$BUDGET_MIB" <<'EOF'
import os, shutil, sys
budget = float(sys.argv[1]) * 2**20
files = sorted((f for f in os.listdir(".") if f != "SHA256SUMS"), key=os.path.getsize, reverse=True)
groups = []
for f in files:
    size = os.path.getsize(f)
    room = [g for g in groups if g[0] + size <= budget]
    if not room:
        groups.append([0, []])
        room = groups[-1:]
    target = min(room, key=lambda g: g[0])
    target[0] += size
    target[1].append(f)
for n, (size, members) in enumerate(groups, 1):
    os.makedirs(f"../{n}")
    shutil.copy("SHA256SUMS", f"../{n}/")
    for f in members:
        os.rename(f, f"../{n}/{f}")
    print(f"{n}: {size / 2**20:5.1f} MiB, {len(members)} files")
EOF
cd .. && rm -r all
groups=$(printf "%s\n" [0-9]* | sort -n)
last=$(echo "$groups" | tail -1)
echo "On the device machine, one call after the other (the machine stays warm 30 s between them):"
for g in $groups; do
    if [ "$g" = "$last" ]; then
        echo "  run  command='bash benchmarks/gpu.sh'  carry=[\"$DEST/$g\"]  timeout_s=600"
    else
        echo "  run  command='bash benchmarks/gpu.sh stash'  carry=[\"$DEST/$g\"]  timeout_s=120"
    fi
done
