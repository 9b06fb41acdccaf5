# shellcheck shell=sh disable=SC2034 # RUN_RC, RUN_MS and RUN_US are run_vm's results
# Shared by the lab scenarios; sourced, not run. POSIX sh: it runs under busybox sh inside
# the lab and under the host's sh when the scenarios run directly on hardware KVM. It needs
# GNU coreutils' `date` (nanoseconds) and `timeout` (status 124 on timeout), which the lab
# carries in; they are called by the paths in $GNU_DATE and $GNU_TIMEOUT, because busybox sh
# prefers its own applets to anything on PATH.
GNU_DATE=${GNU_DATE:-date}
GNU_TIMEOUT=${GNU_TIMEOUT:-timeout}

FAILS=0
CHECKS=0

pass() {
    CHECKS=$((CHECKS + 1))
    echo "PASS: $*"
}

fail() {
    CHECKS=$((CHECKS + 1))
    FAILS=$((FAILS + 1))
    echo "FAIL: $*"
}

# check DESCRIPTION COMMAND...: PASS when COMMAND succeeds, FAIL otherwise.
check() {
    _what=$1
    shift
    if "$@"; then pass "$_what"; else fail "$_what"; fi
}

# die MESSAGE: the scenario cannot run at all.
die() {
    echo "FAIL: $*"
    exit 1
}

# need_file PATH WHAT: fails the scenario unless PATH is a readable file.
need_file() {
    if [ ! -f "$1" ] || [ ! -r "$1" ]; then
        die "$2 $1 does not exist or is not readable"
    fi
}

# need_gnu_tools: date must print nanoseconds and timeout must report 124 on timeout.
need_gnu_tools() {
    case "$("$GNU_DATE" +%N)" in
        *[!0-9]* | '') die "date does not print nanoseconds (GNU coreutils' date is needed)" ;;
    esac
    "$GNU_TIMEOUT" 1 sleep 5
    [ $? -eq 124 ] || die "timeout does not exit 124 on timeout (GNU coreutils' timeout is needed)"
}

# begin: what every scenario does first: a scratch directory in $SCRATCH, removed when the
# scenario exits, and the GNU tools checked.
begin() {
    SCRATCH=$(mktemp -d)
    trap 'rm -rf "$SCRATCH"' EXIT
    need_gnu_tools
}

now_ns() {
    "$GNU_DATE" +%s%N
}

# run_vm NAME SECONDS COMMAND...: runs COMMAND (a VMM) with stdin from /dev/null, killed
# after SECONDS; its stdout goes to $SCRATCH/NAME.out (carriage returns removed) and its
# stderr to $SCRATCH/NAME.err. Sets RUN_RC (124: timed out) and RUN_MS (wall time from
# spawn to exit, in milliseconds, with a 0.001 ms resolution: RUN_US holds microseconds).
run_vm() {
    _name=$1
    _secs=$2
    shift 2
    _t0=$(now_ns)
    "$GNU_TIMEOUT" -k 5 "$_secs" "$@" </dev/null >"$SCRATCH/$_name.raw" 2>"$SCRATCH/$_name.err"
    RUN_RC=$?
    _t1=$(now_ns)
    RUN_US=$(((_t1 - _t0) / 1000))
    RUN_MS=$(awk -v us="$RUN_US" 'BEGIN { printf "%.1f", us / 1000 }')
    tr -d '\r' <"$SCRATCH/$_name.raw" >"$SCRATCH/$_name.out"
}

# show_run NAME: prints the console and stderr of run NAME, prefixed, for the log.
show_run() {
    sed 's/^/    console| /' "$SCRATCH/$1.out"
    sed 's/^/    stderr | /' "$SCRATCH/$1.err"
}

# median NUMBER...: the median (the lower middle one for an even count).
median() {
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# summary GROUP: prints the totals and exits 0 only if every check passed.
summary() {
    if [ "$FAILS" -eq 0 ] && [ "$CHECKS" -gt 0 ]; then
        echo "$1: PASS ($CHECKS checks)"
        exit 0
    fi
    echo "$1: FAIL ($FAILS of $CHECKS checks failed)"
    exit 1
}
