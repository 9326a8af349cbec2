#!/usr/bin/env bash
# Create bench/.venv-prefect (Prefect 3's own venv, never cued's) if it is missing.
# Sets nothing global: no PREFECT_* profile, no shell rc edits.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-prefect"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
if ! "$venv/bin/python" -c 'import prefect, sys; sys.exit(int(prefect.__version__.split(".")[0]) != 3)' \
    2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet 'prefect>=3,<4'
fi
"$venv/bin/python" -c 'import prefect; print("prefect", prefect.__version__)'
