#!/usr/bin/env bash
# Build the neopain appliance as a Debian package: image/build_deb.sh [options]
#
#   --out DIR          where the .deb goes (default: dist/)
#   --arch ARCH        Debian architecture (default: arm64, the Jetson; the neopain wheel is pure Python)
#   --wheelhouse DIR   dependency wheels for the device (cp310 aarch64: JetPack 6's python3), bundled into
#                      /opt/neopain/wheels (a wheel of another Python or machine is refused); without it
#                      the device's system Python must already provide the dependencies
#   --model-dir DIR    exported models to ship in /opt/neopain/models (default: none, folder left empty)
#   --python PY        Python used to build the wheel (default: .venv/bin/python, else python3)
#
# Offline: the wheel is built with `pip wheel --no-deps --no-build-isolation`, from a copy of the source
# tree (nothing is written into the checkout). Prints the path of the .deb on stdout.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$REPO/dist"
ARCH=arm64
WHEELHOUSE=""
MODEL_DIR=""
PYTHON=""

die() { echo "build_deb.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?--out needs a folder}; shift 2 ;;
        --arch) ARCH=${2:?--arch needs a value}; shift 2 ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a folder}; shift 2 ;;
        --model-dir) MODEL_DIR=${2:?--model-dir needs a folder}; shift 2 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

if [ -z "$PYTHON" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"
[ -z "$WHEELHOUSE" ] || [ -d "$WHEELHOUSE" ] || die "--wheelhouse is not a folder: $WHEELHOUSE"
[ -z "$MODEL_DIR" ] || [ -d "$MODEL_DIR" ] || die "--model-dir is not a folder: $MODEL_DIR"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/neopain-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

VERSION=$("$PYTHON" "$REPO/image/debian.py" version)

# 1. The neopain wheel, offline, from a copy of the source.
"$PYTHON" "$REPO/image/debian.py" copy-source "$WORK/src"
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WORK/wheels" "$WORK/src" >&2

WHEEL_ARGS=()
for whl in "$WORK"/wheels/*.whl; do WHEEL_ARGS+=(--wheel "$whl"); done
if [ -n "$WHEELHOUSE" ]; then
    shopt -s nullglob
    for whl in "$WHEELHOUSE"/*.whl; do
        case "$(basename "$whl")" in neopain-*) continue ;; esac
        WHEEL_ARGS+=(--wheel "$whl")
    done
    shopt -u nullglob
else
    echo "build_deb.sh: no --wheelhouse: the device's system Python must provide neopain's dependencies" >&2
fi

# 2. The package tree.
STAGE_ARGS=("$WORK/pkg" --arch "$ARCH" "${WHEEL_ARGS[@]}")
[ -z "$MODEL_DIR" ] || STAGE_ARGS+=(--model-dir "$MODEL_DIR")
"$PYTHON" "$REPO/image/debian.py" stage "${STAGE_ARGS[@]}" >/dev/null

# 3. The .deb (every file owned by root:root, whoever builds it).
mkdir -p "$OUT"
DEB="$OUT/neopain_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$WORK/pkg" "$DEB" >&2
echo "$DEB"
