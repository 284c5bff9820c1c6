#!/usr/bin/env bash
# Create (or update) the project's virtualenv with the pinned PyPI torch that tch needs.
# It lives outside the clone so clean clones (CI) reuse it; a stamp of the requirements'
# hash makes this a no-op until the pins change, and then pip installs only the difference.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
req="$here/python_interop/requirements.txt"
venv=${STYLEBRIDGE_VENV:?STYLEBRIDGE_VENV must name the virtualenv folder}
stamp="$venv/.stylebridge-requirements"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtualenv $venv (pinned torch from PyPI: a few minutes the first time)" >&2
  python3 -m venv "$venv"
fi
echo "setup: installing python_interop/requirements.txt into $venv" >&2
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$req"
echo "$want" > "$stamp"
