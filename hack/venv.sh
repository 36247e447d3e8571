#!/usr/bin/env bash
# Sourced by hack/test and hack/demo: make ./.venv (Python >= 3.11) with gpudra installed from this checkout.
set -euo pipefail
venv=".venv"
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ hack/constraints.txt -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade "pip==25.3"
  python -m pip install --quiet -c hack/constraints.txt -e ".[test]"
  touch "$stamp"
fi
