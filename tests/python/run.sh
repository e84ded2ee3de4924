#!/usr/bin/env bash
# Generates a Python client from proto/ and runs tests/python/test_rally.py against a real rallyd.
#
# The virtual environment lives outside the clone, in /var/tmp/rally-py-venv (RALLY_PY_VENV), and
# is made again when requirements.txt or the Python version changes. The generated code goes to
# a temporary directory that is removed afterwards: nothing generated is kept or committed.
#
# rallyd: RALLYD_BIN when set (used as it is); otherwise
# ${CARGO_TARGET_DIR:-/var/tmp/rally-target}/debug/rallyd, brought up to date with
# `cargo build -p rallyd` first (a no-op when it is current).
#
# Extra arguments go to pytest (for example `-k matchmaking`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
venv=${RALLY_PY_VENV:-/var/tmp/rally-py-venv}
requirements=$here/requirements.txt

say() { printf 'tests/python: %s\n' "$*"; }
die() { printf 'tests/python: %s\n' "$*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || die "$python is required (CPython 3.10 or newer)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  die "$python is $("$python" -V 2>&1); the client needs 3.10 or newer"

# The TLS half of the suite makes its CA and certificate with the openssl CLI.
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing openssl"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  else
    die "the openssl command is required (on Debian: apt-get install openssl)"
  fi
fi

# --- the virtual environment, keyed on the requirements and the interpreter ---------------------
key=$({ sha256sum <"$requirements"; "$python" -c 'import sys; print(sys.version)'; } |
  sha256sum | cut -d' ' -f1)
stamp=$venv/.rally-requirements-key

make_venv() {
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian's python3 keeps venv (ensurepip) in a separate package.
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
      say "installing python$minor-venv"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$minor-venv" >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$python" -m venv "$venv"
    else
      die "$python -m venv failed (on Debian: apt-get install python3-venv)"
    fi
  fi
  say "installing $(grep -cE '^[A-Za-z]' "$requirements") pinned packages into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$requirements"
  echo "$key" >"$stamp"
}

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock -w 600 9 || die "another run holds $venv.lock"
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  say "creating the virtual environment $venv"
  make_venv
else
  say "reusing the virtual environment $venv"
fi
flock -u 9

# --- the generated client ----------------------------------------------------------------------
gen=$(mktemp -d "${TMPDIR:-/tmp}/rally-py-gen.XXXXXX")
trap 'rm -rf "$gen"' EXIT
cd "$root"
mapfile -t protos < <(find proto -name '*.proto' -not -path '*/node_modules/*' | sort)
[ "${#protos[@]}" -gt 0 ] || die "no .proto files under proto/"
say "generating the Python client from ${#protos[@]} files: ${protos[*]}"
"$venv/bin/python" -m grpc_tools.protoc -I proto \
  --python_out="$gen" --pyi_out="$gen" --grpc_python_out="$gen" "${protos[@]}"

# --- rallyd ------------------------------------------------------------------------------------
if [ -n "${RALLYD_BIN:-}" ]; then
  [ -x "$RALLYD_BIN" ] || die "RALLYD_BIN=$RALLYD_BIN is not an executable file"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/rally-target}"
  RALLYD_BIN=$CARGO_TARGET_DIR/debug/rallyd
  command -v cargo >/dev/null 2>&1 || die "cargo is required to build rallyd (or set RALLYD_BIN)"
  say "cargo build -p rallyd"
  cargo build --quiet -p rallyd
  [ -x "$RALLYD_BIN" ] || die "cargo build -p rallyd made no $RALLYD_BIN"
fi
export RALLYD_BIN
say "rallyd: $RALLYD_BIN"

# --- the test ----------------------------------------------------------------------------------
export RALLY_PY_GEN_DIR=$gen
export PYTHONDONTWRITEBYTECODE=1
"$venv/bin/python" -m pytest -p no:cacheprovider -v "$here/test_rally.py" "$@"
