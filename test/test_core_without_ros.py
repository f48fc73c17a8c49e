"""metasym_core must work without ROS: importing every module of it (and running
the `metasym` command's parser) never imports rclpy."""

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import metasym_core
for mod in pkgutil.walk_packages(metasym_core.__path__, "metasym_core."):
    importlib.import_module(mod.name)
from metasym_core.cli import build_parser
build_parser()
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "rosidl_runtime_py", "launch", "launch_ros"))
print("ROS MODULES:", bad)
sys.exit(1 if bad else 0)
"""


def test_core_imports_no_ros():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
