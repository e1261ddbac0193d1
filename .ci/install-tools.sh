#!/usr/bin/env bash
# Installs the outside tools Forge's test suites use. The one place such tools come from:
# .ci/run calls it, and developers may run it once on a Debian machine.
#   curl, jq         - tests/readme.rs runs the README's curl walk-through, which reads answers
#                      with jq (Debian packages)
#   openssl          - tests/integrations.rs runs the README's webhook example, which signs a
#                      payload with `openssl dgst -hmac` (Debian package)
#   ansible-playbook - tests/ansible.rs runs a real playbook: ansible-core from PyPI, in the
#                      venv .ci/venv (git-ignored); .ci/run puts .ci/venv/bin on PATH
#   wrk, file        - benches/load.sh and the static-binary check in .ci/static-build.sh
#   musl-tools       - musl-gcc: the static musl build compiles ring's C and assembly (rustls
#                      for alerts) with it (.ci/static-build.sh)
#   openapi-spec-validator, schemathesis
#                    - tests/spec_tools.rs validates docs/openapi.json and fuzzes a live
#                      server against it: PyPI, in the same venv
#   prometheus-client
#                    - tests/metrics.rs parses /api/metrics with the Prometheus project's own
#                      text parser: PyPI, in the same venv
#   chromium         - tests/browser.rs drives the web page in headless Chromium (Debian)
#   openssh-server   - tests/secrets_linger.rs starts a throwaway sshd on a loopback port to
#                      check SSH host key pinning (Debian; the service itself is not used)
#   newman, playwright-core, openapi-to-postmanv2
#                    - npm packages pinned in tests/js/package.json (+ lock), installed into
#                      tests/js/node_modules (git-ignored): newman runs the Postman walk-through,
#                      playwright-core drives Chromium, openapi-to-postmanv2 generates the
#                      Postman collection (docs/postman/generate.sh)
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

apt_updated=""
apt_install() {
  echo "install-tools: installing $* from Debian"
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v file >/dev/null 2>&1 || need_apt+=(file)
command -v musl-gcc >/dev/null 2>&1 || need_apt+=(musl-tools)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
fi
echo "install-tools: curl $(curl --version | head -1 | cut -d' ' -f2)"

# ansible-core, pinned to a major line, in a venv of our own.
VENV=.ci/venv
ANSIBLE_SPEC='ansible-core>=2.16,<2.19'
PY_TOOLS=('openapi-spec-validator==0.9.0' 'schemathesis==4.32.5' 'prometheus-client==0.21.1')
if ! "$VENV/bin/python" --version >/dev/null 2>&1; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 needs python3-venv (ensurepip) for `python3 -m venv`.
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
fi
if ! "$VENV/bin/ansible-playbook" --version >/dev/null 2>&1 \
  || ! "$VENV/bin/st" --version >/dev/null 2>&1 \
  || ! "$VENV/bin/openapi-spec-validator" --version >/dev/null 2>&1 \
  || ! "$VENV/bin/python" -c 'import prometheus_client.parser' >/dev/null 2>&1; then
  echo "install-tools: installing $ANSIBLE_SPEC ${PY_TOOLS[*]} from PyPI into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$ANSIBLE_SPEC" "${PY_TOOLS[@]}"
fi
echo "install-tools: $("$VENV/bin/ansible-playbook" --version | head -1)"
echo "install-tools: $("$VENV/bin/st" --version)"

# npm packages, exactly as locked, into the build tree.
if [ ! -x tests/js/node_modules/.bin/newman ] \
  || ! cmp -s tests/js/package-lock.json tests/js/node_modules/.forge-installed-lock; then
  echo "install-tools: npm ci in tests/js"
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
  cp tests/js/package-lock.json tests/js/node_modules/.forge-installed-lock
fi
echo "install-tools: newman $(tests/js/node_modules/.bin/newman --version), $(/usr/bin/chromium --version)"
