"""solo-iclmsr: ICL-MSR (Interventional Contrastive Learning with Meta Semantic Regularizer)
for every self-supervised method of solo-learn."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "solo_iclmsr" / "__init__.py").read_text(),
                    re.M).group(1)

setup(
    name="solo-iclmsr",
    version=VERSION,
    description="ICL-MSR (ICML 2022) as a plug-in regularizer for solo-learn's SSL methods",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["solo_iclmsr", "solo_iclmsr.*"]),
    # solo-learn itself is not listed: the project runs on solo-learn's GitHub main (commit
    # 9187ea3, version 1.0.6), which is not on PyPI and does not build on today's setuptools.
    # patches/solo_patch.py installs it, patched, as 1.0.6+iclmsr with honest metadata (README).
    install_requires=[
        "torch>=2.4,<3",
        "torchvision>=0.19",
        "lightning>=2.1,<3",
        "torchmetrics>=1.0",
        "timm>=1.0",
        "kornia>=0.7.2",
        "einops>=0.6",
        "omegaconf>=2.3",
        "hydra-core>=1.3",
        "hydra-joblib-launcher>=1.2",
        "numpy>=1.24",
        "pillow>=9",
        "scipy>=1.10",
        "scikit-learn>=1.2",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "tensorboard>=2.12",
        "pycocotools>=2.0",
    ],
    extras_require={"dev": ["pytest>=7.4", "hydra-submitit-launcher>=1.2"],
                    "slurm": ["hydra-submitit-launcher>=1.2"], "wandb": ["wandb"]},
    entry_points={"console_scripts": ["solo-iclmsr = solo_iclmsr.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
