"""MetaSym: symplectic meta-learning for physical systems.

`pip install .` gives the pure-PyTorch core (`metasym_core`) and the `metasym`
command. The ROS 2 adapters (`metasym_ros`) are installed alongside but import
rclpy only when a node is started.
"""

from glob import glob

from setuptools import Extension, find_packages, setup

setup(
    name="metasym",
    version="0.1.0",
    description="MetaSym: symplectic meta-learning of physical system families",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["metasym_core", "metasym_core.*", "metasym_ros", "metasym_ros.*"]),
    # the bundled demo model (`checkpoint: pretrained`) and the recipe that made it
    package_data={"metasym_core": ["pretrained/*.pt", "pretrained/*.json"]},
    # the compiled rollout kernel (metasym_core/models/native.py): plain C called through ctypes (the module
    # itself is empty); optional, so an install without a C compiler still works (rollouts: NumPy / torch)
    ext_modules=[Extension("metasym_core.models._native", sources=["metasym_core/models/csrc/rollout.c"],
                           depends=["metasym_core/models/csrc/rollout_body.h",
                                    "metasym_core/models/csrc/rollout_types.h",
                                    "metasym_core/models/csrc/nominal.h"],
                           # -g0: no debug info (Python's CFLAGS ask for -g): 43 s instead of 54 s on an AMD EPYC
                           extra_compile_args=["-O3", "-std=c11", "-ffp-contract=fast", "-fno-math-errno",
                                               "-Wno-psabi", "-g0"], optional=True)],
    install_requires=[
        "torch>=2.4",
        "numpy>=1.26",
        "scipy>=1.11",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "PyYAML>=6.0",
    ],
    extras_require={
        "systems": ["qutip>=5.3,<5.4", "crocoddyl>=3.2,<3.3", "pin==4.0.0", "example-robot-data"],
        "dev": ["pytest", "pytest-timeout", "ruff"],
    },
    # the per-system configs, where metasym_core.config looks for them after `pip install .`
    data_files=[("share/metasym/config", sorted(glob("config/*.yaml") + glob("config/*.xml")))],
    entry_points={
        "console_scripts": [
            "metasym = metasym_core.cli:main",
            "metasym-simulator = metasym_ros.start:simulator",
            "metasym-predictor = metasym_ros.start:predictor",
            "metasym-learner = metasym_ros.start:learner",
            "metasym-controller = metasym_ros.start:controller",
        ],
        # subcommands and benchmarks other packages add to `metasym` (metasym_core names none of them)
        "metasym.commands": ["ros = metasym_ros.cli"],
        "metasym.bench": ["ros = metasym_ros.tools.bench_ros", "flight = metasym_ros.tools.bench_flight"],
    },
)
