#!/usr/bin/env bash
# Builds and runs the relay's fuzz targets, each for a fixed time, on the stable toolchain.
#
#   bash services/relay/fuzz/run.sh [TARGET...]     # every target when none is named
#
# Environment:
#   RALLY_FUZZ_SECONDS  seconds per target (default 20)
#   RALLY_TOOLS_DIR     where cargo-fuzz is installed if missing (default /var/tmp/rally-tools)
#   CARGO_TARGET_DIR    the fuzz build goes to its `fuzz` subdirectory (default
#                       /var/tmp/rally-target/fuzz), so repeated runs reuse the build
#
# Stable, not nightly: `--sanitizer none` keeps cargo-fuzz to stable rustc flags (the coverage
# instrumentation libFuzzer needs is `-C passes=sancov-module` and `-C llvm-args`); AddressSanitizer
# would need `-Zsanitizer`. The relay forbids unsafe code, so ASan would add little. Debug
# assertions and overflow checks stay on.
#
# Fails if a target does not build or finds a crash; the reproducer is left in
# services/relay/fuzz/artifacts/<target>/ and can be replayed with
#   PATH="/var/tmp/rally-tools/bin:$PATH" cargo fuzz run --fuzz-dir services/relay/fuzz \
#     --sanitizer none --target-dir /var/tmp/rally-target/fuzz <target> <file>
# The growing corpus lives in services/relay/fuzz/corpus/<target>/ (not in git); the committed
# seeds/<target>/, where present, are read as well.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${RALLY_FUZZ_SECONDS:-20}"
tools_dir="${RALLY_TOOLS_DIR:-/var/tmp/rally-tools}"
target_dir="${CARGO_TARGET_DIR:-/var/tmp/rally-target}/fuzz"
cargo_fuzz_version="0.13.2"

if [[ ! -x "$tools_dir/bin/cargo-fuzz" ]]; then
    echo "run.sh: installing cargo-fuzz $cargo_fuzz_version into $tools_dir" >&2
    cargo install --locked --root "$tools_dir" --version "$cargo_fuzz_version" cargo-fuzz
fi
export PATH="$tools_dir/bin:$PATH"

fuzz=(cargo fuzz)
common=(--fuzz-dir "$fuzz_dir" --sanitizer none --target-dir "$target_dir")

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir "$fuzz_dir")
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "run.sh: no fuzz targets found in $fuzz_dir" >&2
    exit 1
fi

# One build for all targets; `cargo fuzz run` below then finds it up to date.
for target in "${targets[@]}"; do
    "${fuzz[@]}" build "${common[@]}" "$target"
done

log_dir="$target_dir/logs"
mkdir -p "$log_dir"
summary=()
for target in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$target"
    mkdir -p "$corpus"
    dirs=("$corpus")
    if [[ -d "$fuzz_dir/seeds/$target" ]]; then
        dirs+=("$fuzz_dir/seeds/$target")
    fi
    echo "run.sh: fuzzing $target for ${seconds}s" >&2
    log="$log_dir/$target.log"
    # libFuzzer's progress goes to the log; on a crash `cargo fuzz run` fails and the end of
    # the log (the panic and the reproducer's path) is shown.
    if ! "${fuzz[@]}" run "${common[@]}" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        {
            grep -E -A12 'panicked at|ERROR: libFuzzer|==[0-9]+==ERROR' "$log" | head -n 40 || true
            echo "..."
            grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' "$log" | tail -n 40
        } >&2
        echo "run.sh: $target FAILED; reproducer in $fuzz_dir/artifacts/$target/" >&2
        exit 1
    fi
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
    if [[ -z "$done_line" ]]; then
        tail -n 30 "$log" >&2
        echo "run.sh: $target did not report a finished run" >&2
        exit 1
    fi
    summary+=("$target: $done_line")
done

printf 'run.sh: %s\n' "${summary[@]}" >&2
