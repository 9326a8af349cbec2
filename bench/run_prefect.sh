#!/usr/bin/env bash
# Run bench/prefect_flow.py on Prefect 3's default local set-up, isolated from everything:
# its own venv (bench/.venv-prefect, created by setup_prefect.sh if missing), a fresh
# PREFECT_HOME in a temp dir (so a fresh profile and a fresh SQLite database), telemetry
# off, and no inherited PREFECT_* settings, so PREFECT_API_URL is unset and the ephemeral
# API server is used. Arguments are passed on, e.g.: bench/run_prefect.sh --runs 10 --tasks 100
# The JSON result goes to stdout; Prefect's logs go to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-prefect"
if [[ ! -x "$venv/bin/python" ]]; then
    "$here/setup_prefect.sh" >&2
fi

prefect_home="$(mktemp -d -t cued-prefect-home.XXXXXX)"
trap 'rm -rf -- "$prefect_home"' EXIT

# Drop every inherited PREFECT_* variable (PREFECT_API_URL among them).
unset_args=()
while IFS= read -r name; do
    unset_args+=(-u "$name")
done < <(compgen -e | grep '^PREFECT_' || true)

env "${unset_args[@]}" \
    PREFECT_HOME="$prefect_home" \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    "$venv/bin/python" "$here/prefect_flow.py" "$@"
