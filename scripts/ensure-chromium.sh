#!/usr/bin/env bash
# The browser test drives Debian's Chromium (/usr/bin/chromium) with Playwright. Install it when
# missing and we are allowed to; otherwise say so (the test then skips and names the reason).
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "ensure-chromium: no apt-get here; install Chromium at /usr/bin/chromium for the browser test" >&2
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure-chromium: not root and no sudo; run 'apt-get install chromium' for the browser test" >&2
        exit 0
    fi
fi
echo "ensure-chromium: installing Debian's chromium (used by the browser test)" >&2
$SUDO apt-get update -q >/dev/null || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null \
    || echo "ensure-chromium: apt-get install chromium failed; the browser test will skip" >&2
