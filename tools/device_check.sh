#!/usr/bin/env bash
# GPU checks on a machine with PyTorch and CUDA but without the project's venv (no ROS,
# QuTiP or Crocoddyl needed): the compiled rollout kernel built for that Python (when it
# has a C compiler and Python headers), the CUDA tests and the model-core tests under that
# torch, then `metasym bench train` and `metasym bench rollout --device cuda`, each with its CPU
# baseline measured in the same run. Logs and the benchmark doc go to $OUT (default
# ./device_check). Usage: bash tools/device_check.sh
set -uo pipefail
out=${OUT:-device_check}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=${PYTHON:-python3}
cp docs/benchmarks.md "$out/benchmarks.md"
status=0
tests="test/test_cuda.py test/test_rollout.py test/test_encoder.py test/test_decoder.py test/test_ablation.py test/test_adapt.py"
if "$py" setup.py -q build_ext --inplace >"$out/build_native.log" 2>&1 \
    && "$py" -c "from metasym_core.models import native; assert native.available()"; then
    tests="$tests test/test_native.py"
else
    echo "rollout kernel not built here (see build_native.log): CPU rows use the NumPy/torch paths"
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" || exit 1
"$py" -m pytest -q -p no:cacheprovider $tests 2>&1 | tee "$out/pytest.log" || status=1
"$py" -m metasym_core bench train --doc "$out/benchmarks.md" --json 2>&1 | tee "$out/bench_train.log" || status=1
"$py" -m metasym_core bench rollout --device cuda --doc "$out/benchmarks.md" --json 2>&1 \
    | tee "$out/bench_rollout.log" || status=1
exit $status
