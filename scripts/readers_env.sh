#!/usr/bin/env bash
# The environments tests/readers reads the store from, none of this project's packages in them: a virtualenv
# (.readers/) with the Python readers' own packages (tests/readers/requirements.txt), and LanceDB's Node client
# (tests/readers/package-lock.json) under tests/readers/node_modules. `make test-all` runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "tests/readers needs Node.js 18 or newer and npm (apt-get install nodejs npm)" >&2; exit 1; }
[ -x .readers/bin/python ] || python3 -m venv .readers
.readers/bin/python -m pip install -q --disable-pip-version-check -r tests/readers/requirements.txt
npm install --prefix tests/readers --no-audit --no-fund --loglevel=error
