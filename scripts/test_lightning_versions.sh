#!/usr/bin/env bash
# The private-API functions (src/nnlab/compat/lightning.py) and the epoch policy
# (src/nnlab/engine/policy.py) against each supported Lightning minor version: each version is
# installed beside the venv (no dependencies: the venv's torch etc. serve) and put first on the
# path. Usage: scripts/test_lightning_versions.sh [versions...]   (default: the pin's minors)
set -euo pipefail
PY=${PY:-.venv/bin/python}
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(2.4.0 2.5.6 2.6.6)
for v in "${versions[@]}"; do
  target=${TMPDIR:-/tmp}/nnlab-lightning-$v
  [ -d "$target/lightning" ] || "$PY" -m pip install -q --no-deps --target "$target" "lightning==$v"
  echo "== lightning $v"
  PYTHONPATH="$target" "$PY" -m pytest tests/test_compat.py tests/test_policy.py -q -p no:cacheprovider
done
