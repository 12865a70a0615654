#!/usr/bin/env bash
# Install everything dfkd studio and its tests need; safe to run again (every step is idempotent).
#   bash scripts/setup.sh          install
#   bash scripts/setup.sh --app    install, then start the app on the embedded digits data
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first, pinned to the build that installs from local disk; pip is a no-op when it is already there.
$PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
$PY -m pip install -q -e ".[dev]"

# Debian extras: the Fashion-MNIST IDX files and the chromium the browser test drives. Optional for the app.
# As root, or through passwordless sudo where a CI machine runs as a user.
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
  missing=()
  dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || missing+=(dataset-fashion-mnist)
  dpkg -s chromium >/dev/null 2>&1 || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${missing[@]}" >/dev/null; }
  fi
else
  echo "note: not root, no sudo or no apt-get: install 'dataset-fashion-mnist' and 'chromium' yourself for Fashion-MNIST and the browser test"
fi

if [ "${1:-}" = "--app" ]; then
  exec $PY -m streamlit run app.py
fi
