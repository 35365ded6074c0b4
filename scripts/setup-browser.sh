#!/usr/bin/env bash
# The browser test's tools (tests/test_browser_workflows.py): Debian's chromium and playwright-core from npm in
# the git-ignored .cache/browser-test (it drives the system chromium; no browser download). Called by
# `scripts/setup.sh --test`. Without root (or sudo) and without chromium it says so and goes on: the browser
# test then skips, except in CI, where it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAYWRIGHT_CORE_VERSION=1.65.1
if [ ! -x /usr/bin/chromium ]; then
  SUDO=()
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && SUDO=(sudo -n); } || true
  if [ "$(id -u)" = 0 ] || [ ${#SUDO[@]} -gt 0 ]; then
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium
  else
    echo "setup-browser: chromium is not installed and apt-get needs root: the browser test will skip" >&2
  fi
fi
if command -v npm >/dev/null; then
  dir=.cache/browser-test
  if [ "$(node -p "try{require('./$dir/node_modules/playwright-core/package.json').version}catch(e){''}" 2>/dev/null)" \
       != "$PLAYWRIGHT_CORE_VERSION" ]; then
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
    npm install --prefix "$dir" --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_CORE_VERSION"
  fi
else
  echo "setup-browser: node/npm not found: the browser test will skip (install Debian's nodejs and npm)" >&2
fi
