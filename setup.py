"""neopain: continuous neonatal pain estimation at the bedside (face video, cry audio, vitals -> NIPS)."""

from setuptools import find_packages, setup

setup(
    name="neopain",
    version="0.1.0",
    description="Bedside appliance estimating newborn pain (NIPS) from face video, cry audio and vitals",
    # 3.10 is JetPack 6's python3 (Ubuntu 22.04): the device's venv is built on it with system site-packages so
    # that NVIDIA's cp310 TensorRT bindings (python3-libnvinfer) and Jetson torch wheels are usable (image/README.md).
    python_requires=">=3.10",
    packages=find_packages(include=["appliance", "appliance.*", "calibration", "calibration.*", "models", "models.*"]),
    install_requires=[
        # The CPU wheel is installed first by ./run (pip install torch==2.13.0); any torch >= 2.3 works.
        "torch>=2.3",
        "numpy>=1.26",
        "scipy>=1.11",
        # The headless build of opencv-python: same library without the GUI (a bedside box and CI have no
        # display); 4.x because 5.x ships no Haar cascades (our face detector).
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
    ],
    extras_require={
        # GPU-only: installed on the Jetson / GPU box, never needed by the CPU install or the tests.
        "jetson": ["tensorrt>=10", "pycuda>=2024.1"],
        "test": ["pytest>=8", "hypothesis>=6.100", "pingouin>=0.5", "jsonschema>=4.18", "fhir.resources>=8",
                 # tests/test_python_compat.py: the code must stay 3.10-compatible (JetPack 6).
                 "vermin>=1.6"],
    },
    entry_points={"console_scripts": ["neopain=appliance.cli:main"]},
)
