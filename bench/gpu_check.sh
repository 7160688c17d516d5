#!/usr/bin/env bash
# The GPU check as one device call (DEVELOPERS.md, bench/gpu_check.py):
#   here, once:          bash bench/gpu_wheels.sh        (the wheels the GPU machine lacks, in .whl/)
#   device tool's run:   command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 540
# Installs the carried wheels where there are any, then runs the check; arguments pass through
# (`--dry-run --out DIR` runs it on a CPU, as tests/test_gpu_check.py does).
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "gpu_check.sh: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
exec python3 bench/gpu_check.py "$@"
