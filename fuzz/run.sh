#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for a fixed time each, one after the
# other, and reports what each did and found.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      (default: 60 seconds each, every target)
#
# Needs the nightly toolchain and cargo-fuzz (see README.md). Each target's corpus grows
# in corpus/<target>/ (seeded from regressions/<target>/ as well), its libFuzzer log is
# artifacts/<target>.log, and a crashing input lands in artifacts/<target>/. Exit status:
# 0 when no target found anything, 1 when one did, 2 when the targets do not build.
set -uo pipefail
cd "$(dirname "$0")" || exit 2

seconds=${1:-60}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Per-target libFuzzer options.
options() {
    case $1 in
        blk_request) echo "-max_len=2048" ;;
        virtio_net) echo "-max_len=1024" ;;
        oci_spec) echo "-max_len=16384" ;;
        protocol_decode) echo "-max_len=8192" ;;
        *) echo "" ;;
    esac
}

echo "building the fuzz targets..."
mkdir -p artifacts
if ! cargo +nightly fuzz build -O >/dev/null 2>artifacts/build.log; then
    tail -n 30 artifacts/build.log >&2
    echo "the fuzz targets do not build (see fuzz/artifacts/build.log)" >&2
    exit 2
fi

found=0
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    seeds=()
    [ -d "regressions/$target" ] && seeds+=("regressions/$target")
    dict=()
    [ -f "dicts/$target.dict" ] && dict=("-dict=dicts/$target.dict")
    before=$(find "artifacts/$target" -type f | sort)
    log="artifacts/$target.log"
    echo "== $target: ${seconds}s (log: fuzz/$log)"
    # shellcheck disable=SC2046 # options are words
    cargo +nightly fuzz run -O "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${dict[@]}" $(options "$target") >"$log" 2>&1
    status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    new=$(comm -13 <(echo "$before") <(find "artifacts/$target" -type f | sort) | grep -v '^$' || true)
    if [ "$status" -ne 0 ] || [ -n "$new" ]; then
        found=1
        summary+=("$target: FOUND SOMETHING after ${runs:-?} executions (exit $status)")
        grep -m 5 -E "panicked|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /'
        for file in $new; do
            summary+=("    input: fuzz/$file")
        done
    else
        summary+=("$target: nothing found in ${runs:-?} executions over ${seconds}s (corpus: $corpus inputs)")
    fi
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "$found" -ne 0 ]; then
    cat <<'HELP'

To keep a finding: minimise it, save it under regressions/<target>/ with a name that says
what it found, fix the bug and check the replay test (see README.md):
    cargo +nightly fuzz tmin <target> artifacts/<target>/<crash-file>
HELP
fi
exit "$found"
