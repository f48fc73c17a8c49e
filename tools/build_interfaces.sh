#!/usr/bin/env bash
# Build and install the metasym_ros ROS 2 interfaces into a venv that holds the
# ROS 2 PyPI wheels (the venv itself is the ament prefix). Safe to re-run.
#
#   tools/build_interfaces.sh [VENV]      (default: .venv)
#
# Users with a real ROS 2 install build the same package with colcon instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-.venv}"
VENV="$(cd "$VENV" && pwd)"  # absolute: it ends up in RPATHs and cmake caches
PY="$VENV/bin/python"
BUILD="$ROOT/build/interfaces"
JOBS="${METASYM_BUILD_JOBS:-2}"
[[ -x "$PY" ]] || { echo "build_interfaces: no python at $PY (run make venv)" >&2; exit 1; }
t0=$SECONDS

# --- 1. point the message wheels' exported cmake files at this venv's Python ----
# The wheels were built in a manylinux container; their *__rosidl_generator_pyExport
# cmake files name /opt/python/cp3xx-.../include/... as INTERFACE_INCLUDE_DIRECTORIES,
# and CMake rejects imported targets whose include dirs do not exist. Every entry is
# re-derived from its kind (Python headers / numpy headers), so re-runs are no-ops.
PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NP_INC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
[[ -f "$PY_INC/Python.h" ]] || { echo "build_interfaces: no Python.h in $PY_INC" >&2; exit 1; }
"$PY" - "$VENV" "$PY_INC" "$NP_INC" <<'PYEOF'
import pathlib
import re
import sys

venv, py_inc, np_inc = sys.argv[1:4]
prefix = pathlib.Path(venv)
files = set(prefix.glob("share/*/cmake/*__rosidl_generator_pyExport.cmake"))
for pattern in ("share/*/cmake/*.cmake", "lib/cmake/*/*.cmake"):
    files.update(p for p in prefix.glob(pattern) if "/opt/python/cp" in p.read_text(errors="replace"))

prop = re.compile(r'(INTERFACE_INCLUDE_DIRECTORIES\s+")([^"]*)(")')


def fix_entry(entry):
    if re.search(r"/numpy/(_core/|core/)?include$", entry):
        return np_inc
    if re.search(r"/include/python3\.\d+[a-z]*$", entry):
        return py_inc
    return entry


changed = 0
for path in sorted(files):
    text = path.read_text()
    new = prop.sub(lambda m: m[1] + ";".join(fix_entry(e) for e in m[2].split(";")) + m[3], text)
    if "/opt/python/cp" in new:
        sys.exit(f"build_interfaces: unhandled wheel-builder path left in {path}")
    if new != text:
        path.write_text(new)
        changed += 1
print(f"[interfaces] include paths: {changed} of {len(files)} exported cmake files rewritten")
PYEOF

# --- 2. configure, build, install into the venv prefix -------------------------
# The generated libraries land in $VENV/lib and the Python extensions in
# site-packages/metasym_ros; an absolute install RPATH to $VENV/lib lets them load
# without LD_LIBRARY_PATH (the wheels' re-exec sets it too, but not in every context).
# No build type (no -O2), like a plain colcon build: the generated code only converts
# and (de)serialises whole arrays, and -O2 costs ~20% more compile time.
# A build dir configured for another venv is stale (absolute paths everywhere): start over.
if [[ -f "$BUILD/CMakeCache.txt" ]] \
   && ! grep -qxF "CMAKE_INSTALL_PREFIX:PATH=$VENV" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
fi
GEN=()
if [[ ! -f "$BUILD/CMakeCache.txt" ]] && command -v ninja >/dev/null; then
  GEN=(-G Ninja)  # less overhead than make; an existing build dir keeps its generator
fi
mkdir -p "$BUILD"
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
cmake -S "$ROOT" -B "$BUILD" ${GEN[@]+"${GEN[@]}"} --log-level=WARNING -Wno-dev \
  -DCMAKE_BUILD_TYPE= \
  -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DCMAKE_PREFIX_PATH="$VENV" \
  -DPython3_EXECUTABLE="$PY" \
  -DPython3_FIND_VIRTUALENV=ONLY \
  -DCMAKE_INSTALL_RPATH="$VENV/lib" \
  -DBUILD_TESTING=OFF \
  -DMETASYM_ROS_INSTALL_PYTHON_SOURCES=OFF \
  >"$BUILD/configure.log" 2>&1 || { cat "$BUILD/configure.log" >&2; exit 1; }
cmake --build "$BUILD" -j "$JOBS" >"$BUILD/build.log" 2>&1 \
  || { tail -n 60 "$BUILD/build.log" >&2; exit 1; }
cmake --install "$BUILD" >"$BUILD/install.log" 2>&1 \
  || { tail -n 40 "$BUILD/install.log" >&2; exit 1; }

# --- 3. verify ------------------------------------------------------------------
# Run from / so that the installed metasym_ros/__init__.py is the one imported (not the
# source tree via the cwd); loading the type support loads the compiled extensions.
(cd / && "$PY" -c 'from metasym_ros.msg import Prediction; from metasym_ros.srv import RolloutBatch
for t in (Prediction, RolloutBatch.Request, RolloutBatch.Response):
    type(t).__import_type_support__()
    assert type(t)._TYPE_SUPPORT, t') \
  || { echo "build_interfaces: metasym_ros.msg/srv do not import" >&2; exit 1; }
echo "[interfaces] metasym_ros built and installed into $VENV in $((SECONDS - t0)) s"
