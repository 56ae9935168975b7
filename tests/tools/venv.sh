#!/usr/bin/env bash
# Makes (once) the venv with tests/tools/requirements.txt under the cargo target dir and
# prints its bin directory. A lock keeps parallel test binaries from racing pip; a venv
# whose requirements changed is made again. Fails (non-zero) when pip cannot install:
# the tests that need these tools fail with that message instead of skipping.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
venv="$target/tools-venv"
mkdir -p "$target"
exec 9>"$target/tools-venv.lock"
flock 9
if ! cmp -s "$here/requirements.txt" "$venv/requirements.txt" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        -r "$here/requirements.txt" >&2
    cp "$here/requirements.txt" "$venv/requirements.txt"
fi
echo "$venv/bin"
