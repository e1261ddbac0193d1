#!/usr/bin/env bash
# Installs the outside tools Forge's test suites use. The one place such tools come from:
# .ci/run calls it, and developers may run it once on a Debian machine.
#   curl   - tests/readme.rs runs the README's curl walk-through (Debian package)
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-tools: installing ${need_apt[*]} from Debian"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
echo "install-tools: curl $(curl --version | head -1 | cut -d' ' -f2)"
