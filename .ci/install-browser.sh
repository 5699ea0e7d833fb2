#!/usr/bin/env bash
# Headless Chromium for tests/test_app.py (driven by the playwright Python package; no browser download), and
# GDAL's command-line tools (gdalwarp, ogrinfo) that tests/test_scenes_run.py checks the scene outputs with.
# Idempotent: does nothing when both are already installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v ogrinfo >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium gdal-bin >/dev/null
