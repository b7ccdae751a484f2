#!/usr/bin/env bash
# Debian's headless Chromium and its driver for the browser test of `emotrain serve`'s page
# (tests/test_serve.py): installed when missing. CI must have them, so a failed install fails CI;
# elsewhere the test skips with its reason.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
echo "ci: installing chromium and chromium-driver (Debian packages) for the page's browser test" >&2
log="$(mktemp)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -q --no-install-recommends chromium chromium-driver; } >"$log" 2>&1; then
    tail -20 "$log" >&2
    echo "ci: could not install chromium chromium-driver (see above)" >&2
    exit 1
fi
rm -f "$log"
