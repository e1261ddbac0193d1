#!/usr/bin/env bash
# Generates docs/postman/forge.postman_collection.json, the whole-API Postman collection, from
# docs/openapi.json with openapi-to-postmanv2 (pinned in tests/js/package.json, installed into
# tests/js/node_modules by .ci/install-tools.sh). Folders by tag, parameters from the spec's
# examples, Bearer auth from the {{bearerToken}} variable, requests on {{baseUrl}}.
# The output is deterministic (see generate.js): generating twice gives the same bytes.
#
#   docs/postman/generate.sh            regenerate the committed file
#   docs/postman/generate.sh --check    exit 1 if the committed file is not what the spec gives
#   docs/postman/generate.sh [--check] --spec FILE --out FILE
#                                       the same for another spec / output file
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
spec="$root/docs/openapi.json"
out="$here/forge.postman_collection.json"
check=""

while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --spec) spec="$2"; shift ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "generate.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ! command -v node >/dev/null 2>&1; then
  echo "generate.sh: node is not installed (run .ci/install-tools.sh)" >&2
  exit 2
fi
if [ ! -d "$root/tests/js/node_modules/openapi-to-postmanv2" ]; then
  echo "generate.sh: tests/js/node_modules/openapi-to-postmanv2 is missing (run .ci/install-tools.sh)" >&2
  exit 2
fi
if [ ! -f "$spec" ]; then
  echo "generate.sh: no spec at $spec" >&2
  exit 2
fi

tmp="$(mktemp "${TMPDIR:-/tmp}/forge-postman.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
node "$here/generate.js" "$spec" "$tmp"

if [ -n "$check" ]; then
  if [ ! -f "$out" ]; then
    echo "generate.sh: $out does not exist; run docs/postman/generate.sh and commit it" >&2
    exit 1
  fi
  if ! cmp -s "$tmp" "$out"; then
    echo "generate.sh: $out is out of date with $spec." >&2
    echo "Run docs/postman/generate.sh and commit the result. First differences:" >&2
    diff -u "$out" "$tmp" --label committed --label generated | head -40 >&2 || true
    exit 1
  fi
  echo "generate.sh: $out is up to date"
  exit 0
fi

cp "$tmp" "$out"
echo "generate.sh: wrote $out"
