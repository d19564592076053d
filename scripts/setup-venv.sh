#!/usr/bin/env bash
# Create the virtualenv $2 with $1 and install the project (`.[dev]`, editable) when what is installed does
# not satisfy pyproject.toml (scripts/venv_ready.py reads the installed packages; no stamp file).
set -euo pipefail
python=${1:-python3}; venv=${2:-.venv}
if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" scripts/venv_ready.py dev 2>/dev/null && exit 0
log="$venv/pip-install.log"
echo "pip install -e '.[dev]' into $venv (log: $log)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! { "$venv/bin/python" -m pip install --upgrade pip && "$venv/bin/python" -m pip install -e '.[dev]'; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "pip install failed; the whole log is in $log" >&2
  exit 1
fi
"$venv/bin/python" scripts/venv_ready.py dev
