#!/usr/bin/env bash
# Makes sure a headless Chromium is available for the dashboard's browser test: reuses the one
# named by CHROMIUM or found on PATH, otherwise installs Debian's `chromium` package (as root).
# Exports CHROMIUM with the binary's path. Source it (scripts/test.sh does) or run it.
# When no Chromium can be had it says so and returns non-zero; the browser test then fails with
# the same message instead of passing silently.
set -uo pipefail

chromium_find() {
  if [ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ]; then return 0; fi
  local c
  for c in chromium chromium-browser; do
    if command -v "$c" >/dev/null 2>&1; then CHROMIUM="$(command -v "$c")"; return 0; fi
  done
  return 1
}

chromium_ensure() {
  chromium_find && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: not installed and apt-get is not available; install Debian's chromium by hand" >&2
    return 1
  fi
  echo "chromium: installing Debian's chromium package"
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null || return 1
  chromium_find
}

if chromium_ensure; then
  export CHROMIUM
  echo "chromium: using $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
else
  echo "chromium: no Chromium could be installed; the dashboard browser test will fail" >&2
  return 1 2>/dev/null || exit 1
fi
