#!/usr/bin/env bash
# The Debian packages some tests start for real: chromium (the runs report in a headless browser), prometheus
# (promtool: the alert rules) and prometheus-pushgateway (the pushed run metrics). Installed when missing, with
# apt-get as root or through sudo; otherwise says what to install.
set -euo pipefail
declare -A needs=([chromium]=chromium [promtool]=prometheus [prometheus-pushgateway]=prometheus-pushgateway)
missing=()
for cmd in "${!needs[@]}"; do
    command -v "$cmd" >/dev/null || missing+=("${needs[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "the tests need these Debian packages: ${missing[*]} (apt-get install them, or run as root)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
