#!/usr/bin/env bash
# Builds rally-ffi (librally) and the C example game_loop.c, starts a real rallyd on loopback,
# and plays two instances of the example against each other (one hosts a room, one joins it;
# the room id goes from one to the other through a file) under valgrind's memcheck. Passes when
# both instances pass their checks (reliable packets complete, intact and in order; some
# unreliable ones; a ping; a clean close) and valgrind finds no invalid access and no definite
# or indirect leak.
#
# rallyd: RALLYD_BIN when set, else ${CARGO_TARGET_DIR:-/var/tmp/rally-target}/debug/rallyd
# brought up to date with `cargo build -p rallyd`. RALLY_FFI_VALGRIND=0 runs without valgrind
# (quicker, for development). Nothing is suppressed: the run is clean as it is.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/rally-target}"
use_valgrind=${RALLY_FFI_VALGRIND:-1}
timeout_s=${RALLY_EXAMPLE_TIMEOUT_S:-150}

say() { printf 'ffi example: %s\n' "$*"; }
die() { printf 'ffi example: %s\n' "$*" >&2; exit 1; }

install_packages() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    die "$* missing (apt-get install $*)"
  fi
}
command -v cc >/dev/null 2>&1 || install_packages gcc libc6-dev
if [ "$use_valgrind" = 1 ] && ! command -v valgrind >/dev/null 2>&1; then
  install_packages valgrind
fi

cd "$root"
say "building rally-ffi"
cargo build --quiet -p rally-ffi
lib_dir=$CARGO_TARGET_DIR/debug
[ -f "$lib_dir/librally.so" ] || die "$lib_dir/librally.so was not built"
if [ -n "${RALLYD_BIN:-}" ]; then
  rallyd=$RALLYD_BIN
else
  cargo build --quiet -p rallyd
  rallyd=$CARGO_TARGET_DIR/debug/rallyd
fi
[ -x "$rallyd" ] || die "$rallyd is not an executable file"

work=$(mktemp -d "${TMPDIR:-/tmp}/rally-ffi-example.XXXXXX")
rallyd_pid=
cleanup() {
  if [ -n "$rallyd_pid" ]; then
    kill "$rallyd_pid" 2>/dev/null || true
    wait "$rallyd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

say "compiling game_loop.c with cc against include/rally.h"
cc -std=c11 -Wall -Wextra -Werror -pedantic -g -O1 \
  -I "$root/client/ffi/include" "$here/game_loop.c" \
  -L "$lib_dir" -lrally -Wl,-rpath,"$lib_dir" -o "$work/game_loop"

say "starting rallyd"
mkdir -p "$work/data"
RALLY_LOG=info "$rallyd" --listen 127.0.0.1:0 --relay-listen 127.0.0.1:0 \
  --data-dir "$work/data" >"$work/rallyd.log" 2>&1 &
rallyd_pid=$!
addr=
for _ in $(seq 1 300); do
  addr=$(sed -n 's/.*gRPC listening on \([0-9.:]*\).*/\1/p' "$work/rallyd.log" | head -n 1)
  [ -n "$addr" ] && break
  kill -0 "$rallyd_pid" 2>/dev/null || { cat "$work/rallyd.log" >&2; die "rallyd exited"; }
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/rallyd.log" >&2; die "rallyd did not say where it listens"; }
url=http://$addr
say "rallyd listens on $url"

runner=()
if [ "$use_valgrind" = 1 ]; then
  # 99: valgrind found an error (the example itself exits 1 when a check fails).
  runner=(valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect
    --errors-for-leak-kinds=definite,indirect --num-callers=30)
  say "running both instances under $(valgrind --version)"
fi

export RALLY_EXAMPLE_TIMEOUT_S=$timeout_s
play() { # role
  local log=()
  [ "${#runner[@]}" = 0 ] || log=(--log-file="$work/valgrind-$1.log")
  timeout --kill-after=10 $((timeout_s * 4)) "${runner[@]}" "${log[@]}" \
    "$work/game_loop" "$url" "$1" "$work/room" >"$work/$1.out" 2>&1
}

started=$(date +%s)
play host &
host_pid=$!
play join &
join_pid=$!
host_status=0
join_status=0
wait "$host_pid" || host_status=$?
wait "$join_pid" || join_status=$?
elapsed=$(($(date +%s) - started))

for role in host join; do
  say "--- $role output"
  cat "$work/$role.out"
  if [ -f "$work/valgrind-$role.log" ]; then
    say "--- $role: valgrind"
    grep -E 'ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|in use at exit|suppressed:' \
      "$work/valgrind-$role.log" | sed 's/^==[0-9]*== //' || true
  fi
done
for role in host join; do
  status_var=${role}_status
  status=${!status_var}
  if [ "$status" != 0 ]; then
    if [ -f "$work/valgrind-$role.log" ]; then
      say "--- $role: full valgrind log"
      cat "$work/valgrind-$role.log"
    fi
    say "--- rallyd log (last 40 lines)"
    tail -n 40 "$work/rallyd.log"
    case $status in
      99) die "$role: valgrind found errors (above)" ;;
      124|137) die "$role: did not finish in time" ;;
      *) die "$role: exited with $status" ;;
    esac
  fi
done
say "both instances passed in ${elapsed} s$([ "$use_valgrind" = 1 ] && echo ', with no valgrind errors')"
