#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Fuzz every parser of outside input for a while with libFuzzer + ASan/UBSan.
#
#   tests/fuzz/run-fuzz.sh [SECONDS] [HARNESS...]
#
# SECONDS per harness (default 60); HARNESS among json event_json config ack cli
# cache command config_remote
# (default: all). Configures a clang build with SCRM_FUZZ=ON in build/fuzz
# (override with SCRM_FUZZ_BUILD=dir; SCRM_FUZZ_SOURCE=dir fuzzes another
# checkout), builds the harnesses only, and runs each on a work corpus
# seeded from tests/fuzz/corpus/<name>/ (the seed directory is only read).
# New interesting inputs land in <build>/tests/fuzz/work/<name>/corpus,
# crashes in .../artifacts. Prints executions and edge coverage ("cov:",
# libFuzzer's count of instrumented edges reached) per harness; exits 1 if
# any harness crashed or its coverage stayed under its floor below, 2 on a
# build problem.
#
# Coverage floors: a harness whose parser is not compiled into it (linked
# from an uninstrumented library) reaches a handful of edges and fuzzes
# blind while looking green; fuzz_ack did, at 9 edges (313 with delivery.c
# and sync.c compiled in). Each floor is about 70% of the coverage measured
# after 20 s from the seed corpus (this script's RelWithDebInfo build, clang
# 14, 2026-12): json 372, event_json 444, config 423, ack 313, cli 406,
# cache 656, command 388, config_remote 488. Raise a floor when its harness
# grows.
# Runs shorter than 20 s are not checked against the floors.
set -eu

floor() {
	case $1 in
	json) echo 260 ;;
	event_json) echo 310 ;;
	config) echo 295 ;;
	ack) echo 220 ;;
	cli) echo 285 ;;
	cache) echo 460 ;;
	command) echo 270 ;;
	config_remote) echo 340 ;;
	*) echo 1 ;;
	esac
}

here=$(cd "$(dirname "$0")" && pwd)
src=${SCRM_FUZZ_SOURCE:-$(cd "$here/../.." && pwd)}
build=${SCRM_FUZZ_BUILD:-$src/build/fuzz}
secs=60
if [ $# -gt 0 ]; then
	secs=$1
	shift
fi
harnesses=${*:-json event_json config ack cli cache command config_remote}
jobs=$(nproc 2>/dev/null || echo 2)

mkdir -p "$build"
cmake -S "$src" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DSCRM_FUZZ=ON -DSCRM_SANITIZE=OFF >"$build/configure.log" 2>&1 ||
	{ cat "$build/configure.log"; exit 2; }
targets=""
for h in $harnesses; do targets="$targets fuzz_$h"; done
# shellcheck disable=SC2086
cmake --build "$build" -j"$jobs" --target $targets || exit 2

# One harness per core at a time: libFuzzer is single-threaded, so each
# still gets its whole ${secs} s of one core (and its coverage floor holds).
run_one() {
	h=$1
	work="$build/tests/fuzz/work/$h"
	mkdir -p "$work/corpus" "$work/artifacts"
	# Artifacts are this run's findings: clear the previous run's.
	rm -f "$work/artifacts/"*
	dict=""
	[ -f "$here/$h.dict" ] && dict="-dict=$here/$h.dict"
	set +e
	# shellcheck disable=SC2086
	"$build/tests/fuzz/fuzz_$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-max_len=65536 -print_final_stats=1 -artifact_prefix="$work/artifacts/" $dict \
		"$work/corpus" "$src/tests/fuzz/corpus/$h" >"$work/log" 2>&1
	echo $? >"$work/rc"
	set -e
}

running=0
for h in $harnesses; do
	echo "== fuzz_$h for ${secs}s"
	rm -f "$build/tests/fuzz/work/$h/rc"
	run_one "$h" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait -n || true
		running=$((running - 1))
	fi
done
wait

status=0
summary=""
for h in $harnesses; do
	work="$build/tests/fuzz/work/$h"
	rc=$(cat "$work/rc" 2>/dev/null || echo 127)
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n 1)
	# the last "cov: N" libFuzzer printed (its DONE line on a clean run)
	cov=$(grep -o 'cov: [0-9]*' "$work/log" | tail -n 1 | sed 's/cov: //')
	crashes=$(find "$work/artifacts" -type f | wc -l)
	if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
		status=1
		echo "!! fuzz_$h: exit $rc, $crashes artifact(s) in $work/artifacts; log: $work/log"
		grep -E "ERROR|runtime error|invariant|SUMMARY" "$work/log" | head -n 20 || true
	fi
	min=$(floor "$h")
	verdict="floor $min"
	if [ "$secs" -lt 20 ]; then
		verdict="floor not checked (< 20 s)"
	elif [ -z "$cov" ] || [ "$cov" -lt "$min" ]; then
		status=1
		verdict="UNDER FLOOR $min"
		echo "!! fuzz_$h: coverage ${cov:-unknown} edges, under its floor of $min: is the parser compiled into the harness (tests/fuzz/CMakeLists.txt)?"
	fi
	line=$(printf '%-14s %10s execs  cov %6s  %-28s exit %s  artifacts %s' "$h" "${execs:-?}" "${cov:-?}" \
		"$verdict" "$rc" "$crashes")
	summary="$summary$line
"
done
echo "== summary (${secs}s each)"
printf '%s' "$summary"
exit $status
