#!/usr/bin/env bash
# Runs every fuzz target (or the ones named as arguments) for FUZZ_SECS seconds each, one after
# the other, and prints per target the executions and the crashes found. `make fuzz` calls this.
#
#   fuzz/run.sh                      # all targets, FUZZ_SECS (default 60) each
#   FUZZ_SECS=120 fuzz/run.sh envelope data
#
# Needs cargo-fuzz (installed here if missing). Uses the nightly toolchain with AddressSanitizer
# when rustup has one; otherwise the default (stable) toolchain with `--sanitizer none`, which
# keeps libFuzzer's coverage guidance, panics, overflow checks, OOM and timeout detection (the
# workspace forbids unsafe code, so ASan adds little). Override with FUZZ_TOOLCHAIN=<name> and
# FUZZ_SANITIZER=address|none. See docs/fuzzing.md.
# New corpus inputs go to fuzz/corpus/<target>/, crash inputs to fuzz/artifacts/<target>/,
# libFuzzer's output to fuzz/logs/<target>.log; none of these are committed.
# Exit status: 0 when no target crashed, 1 when one did, 2 when the tools are missing.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
cd "$FUZZ_DIR"
export PATH="$HOME/.cargo/bin:$PATH"

FUZZ_SECS="${FUZZ_SECS:-60}"
# Memory and time limits per input; anything over them is reported as a crash (oom-/timeout-).
FUZZ_RSS_MB="${FUZZ_RSS_MB:-2048}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-10}"

die() {
	echo "fuzz: $*" >&2
	exit 2
}

command -v cargo >/dev/null || die "cargo not found; install Rust with rustup (https://rustup.rs)."
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
	CARGO=(cargo "+$FUZZ_TOOLCHAIN")
	"${CARGO[@]}" --version >/dev/null 2>&1 || die "toolchain '$FUZZ_TOOLCHAIN' is not installed"
	SANITIZER="${FUZZ_SANITIZER:-address}"
elif cargo +nightly --version >/dev/null 2>&1; then
	CARGO=(cargo +nightly)
	SANITIZER="${FUZZ_SANITIZER:-address}"
else
	CARGO=(cargo)
	SANITIZER="${FUZZ_SANITIZER:-none}"
	echo "fuzz: no nightly toolchain; fuzzing on $(cargo --version) without AddressSanitizer."
	echo "      For ASan: rustup toolchain install nightly --profile minimal"
fi
if [ "$SANITIZER" != none ] && ! "${CARGO[@]}" --version | grep -q nightly; then
	die "--sanitizer $SANITIZER needs a nightly toolchain (or use FUZZ_SANITIZER=none)"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz: cargo-fuzz not found, installing it (cargo install cargo-fuzz --locked)"
	cargo install cargo-fuzz --locked || die "could not install cargo-fuzz"
fi
FLAGS=(-O --debug-assertions --sanitizer "$SANITIZER")

ALL_TARGETS=$("${CARGO[@]}" fuzz list)
if [ "$#" -gt 0 ]; then
	TARGETS="$*"
	for t in $TARGETS; do
		grep -qx "$t" <<<"$ALL_TARGETS" || die "no fuzz target '$t' (have: $(echo $ALL_TARGETS))"
	done
else
	TARGETS="$ALL_TARGETS"
fi

echo "fuzz: building (${CARGO[*]} fuzz build ${FLAGS[*]})"
"${CARGO[@]}" fuzz build "${FLAGS[@]}"

mkdir -p logs
results=()
total_execs=0
total_crashes=0
for t in $TARGETS; do
	mkdir -p "corpus/$t" "artifacts/$t"
	seeds=("$FUZZ_DIR/seeds/$t")
	[ -d "$FUZZ_DIR/regressions/$t" ] && seeds+=("$FUZZ_DIR/regressions/$t")
	before=$(find "artifacts/$t" -type f | wc -l)
	echo "fuzz: $t for ${FUZZ_SECS}s (log: fuzz/logs/$t.log)"
	start=$(date +%s)
	# The first corpus directory receives new inputs; the seed directories are only read.
	set +e
	"${CARGO[@]}" fuzz run "${FLAGS[@]}" "$t" "$FUZZ_DIR/corpus/$t" "${seeds[@]}" -- \
		-max_total_time="$FUZZ_SECS" -rss_limit_mb="$FUZZ_RSS_MB" -timeout="$FUZZ_TIMEOUT" \
		-print_final_stats=1 >"logs/$t.log" 2>&1
	rc=$?
	set -e
	secs=$(($(date +%s) - start))
	# Executions: libFuzzer's final stat, else the last `#N` status line (e.g. after a crash).
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -n1)
	if [ -z "$execs" ]; then
		execs=$(grep -oE '^#[0-9]+' "logs/$t.log" | tail -n1 | tr -d '#')
	fi
	execs=${execs:-0}
	after=$(find "artifacts/$t" -type f | wc -l)
	crashes=$((after - before))
	if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
		# A failure without an artifact (build error, bad flag): show it, count it.
		tail -n 20 "logs/$t.log" >&2
		crashes=1
	fi
	if [ "$crashes" -gt 0 ]; then
		grep -E "panicked at|^SUMMARY|==ERROR|Test unit written" "logs/$t.log" | head -n 5 || true
	fi
	results+=("$(printf '%-18s %6ss %14s %8s' "$t" "$secs" "$execs" "$crashes")")
	total_execs=$((total_execs + execs))
	total_crashes=$((total_crashes + crashes))
done

echo
printf '%-18s %7s %14s %8s\n' target time executions crashes
printf '%s\n' "${results[@]}"
printf '%-18s %7s %14s %8s\n' total "" "$total_execs" "$total_crashes"
if [ "$total_crashes" -gt 0 ]; then
	echo "fuzz: crash inputs are in fuzz/artifacts/<target>/; replay one with"
	echo "      (cd fuzz && ${CARGO[*]} fuzz run ${FLAGS[*]} <target> artifacts/<target>/<file>)"
	exit 1
fi
