"""fbnet_zoo: the FBNetV3 family as data, its NARS search, and detection adapters.

search/ and detection/ live at the top of the repository but install as
fbnet_zoo.search and fbnet_zoo.detection; model_configs/ ships as fbnet_zoo.model_configs.
"""

from setuptools import find_packages, setup

MAPPED = {"fbnet_zoo.search": "search", "fbnet_zoo.detection": "detection",
          "fbnet_zoo.model_configs": "model_configs"}

packages = ["fbnet_zoo"] + find_packages(include=["fbnet_zoo.*"])
package_dir = {}
for package, folder in MAPPED.items():
    packages.append(package)
    package_dir[package] = folder
    packages += [f"{package}.{sub}" for sub in find_packages(where=folder)]

setup(
    name="fbnet_zoo",
    version="0.1.0",
    description="FBNetV3 models as data, exact FLOPs/params, NARS search, detectron2 adapters",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=packages,
    package_dir=package_dir,
    package_data={"fbnet_zoo.model_configs": ["*/*.yaml", "*/*/*.yaml", "detection/lazy/*.py", "benchmarks/*.csv",
                                              "benchmarks/*.md"]},
    install_requires=[
        "torch>=2.1",
        "pyyaml>=5.4",
        "iopath>=0.1.9",
        "numpy",
    ],
    extras_require={
        "complexity": ["fvcore>=0.1.5"],
        "search": ["scipy>=1.9", "tqdm", "matplotlib", "torchvision>=0.16", "fvcore>=0.1.5"],
        "ray": ["ray[default]>=2.9"],
        "nas-bench": ["nats_bench>=1.7", "nas-bench-201>=2.1"],   # official NAS-Bench-201 files (bench.source)
        "detection": ["torchvision>=0.16", "pycocotools>=2.0.6", "fvcore>=0.1.5"],
        "export": ["onnx", "onnxruntime"],
        "test": ["pytest>=7", "timm>=0.9", "fvcore>=0.1.5", "scipy>=1.9", "tqdm", "matplotlib",
                 "torchvision>=0.16", "pycocotools>=2.0.6", "onnx", "onnxruntime", "ray[default]>=2.9"],
    },
    entry_points={"console_scripts": []},
)
