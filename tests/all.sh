#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/all.sh — the whole test suite, exactly what CI runs (.ci/run):
#   1. installs what is missing (cross/setup-host.sh, cross/setup-sysroot.sh)
#   2. host-debug (ASan+UBSan): build, unit + fuzz-corpus + integration tests
#   3. host-release: build, the same tests
#   4. linux-arm64 and linux-armhf: cross build, the same tests under qemu-user
#      (linux-arm64 runs the unit, fuzz-corpus and package tests and the
#      integration scenarios labelled arm64, one or two per concern: it is
#      LP64 like x86_64, where every scenario runs twice; linux-armhf runs
#      everything, for the 32-bit time_t and size_t and ARM under qemu)
#   5. fuzz: libFuzzer harnesses (clang) for SCRM_FUZZ_SECONDS each (default 20)
# Ends with one line "N passed, N failed" (ctest tests summed over the stages,
# plus one per fuzzer); exits non-zero if anything failed.
# Options: --quick (host-debug only), --stages "host-debug linux-arm64 ..."
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

STAGES="host-debug host-release linux-arm64 linux-armhf fuzz"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) STAGES="host-debug"; shift ;;
    --stages) STAGES="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "tests/all.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

passed=0; failed=0; summary=()
t_start=$(date +%s)

note() { printf '\n=== %s ===\n' "$*"; }

cross/setup-host.sh || { echo "tests/all.sh: cross/setup-host.sh failed" >&2; echo "0 passed, 1 failed"; exit 1; }
for arch in arm64 armhf; do
  case " $STAGES " in *" linux-$arch "*)
    cross/setup-sysroot.sh "$arch" || { echo "tests/all.sh: sysroot for $arch failed" >&2; echo "0 passed, 1 failed"; exit 1; } ;;
  esac
done

run_preset() {
  local p=$1 t0 log
  t0=$(date +%s)
  log="build/$p-ctest.log"
  note "$p: configure + build"
  if ! cmake --preset "$p" >"build/$p-configure.log" 2>&1; then
    tail -n 30 "build/$p-configure.log"
    failed=$((failed + 1)); summary+=("$p: CONFIGURE FAILED"); return
  fi
  if ! cmake --build --preset "$p" >"build/$p-build.log" 2>&1; then
    grep -E "error|Error" "build/$p-build.log" | head -n 30
    failed=$((failed + 1)); summary+=("$p: BUILD FAILED"); return
  fi
  note "$p: tests"
  # Unit tests in parallel; integration tests are RUN_SERIAL (they share the CPU with a broker).
  ctest --preset "$p" -j2 2>&1 | tee "$log" | grep -E "Test +#|tests passed|Failed|\*\*\*" || true
  local line p_ok p_total
  line=$(grep -E "tests passed, [0-9]+ tests? failed out of [0-9]+" "$log" | tail -n 1)
  if [ -z "$line" ]; then
    failed=$((failed + 1)); summary+=("$p: ctest did not finish"); return
  fi
  p_total=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
  local p_fail
  p_fail=$(sed -E 's/.*tests passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")
  p_ok=$((p_total - p_fail))
  passed=$((passed + p_ok)); failed=$((failed + p_fail))
  summary+=("$p: $p_ok passed, $p_fail failed ($(( $(date +%s) - t0 )) s)")
}

mkdir -p build
for s in $STAGES; do
  case "$s" in
    fuzz)
      note "fuzz: libFuzzer, ${SCRM_FUZZ_SECONDS:-20} s per harness"
      t0=$(date +%s)
      out=$(tests/fuzz/run-fuzz.sh "${SCRM_FUZZ_SECONDS:-20}" 2>&1); rc=$?
      # Summary lines: "<harness>  <n> execs  cov <n>  floor <n>  exit <rc>  artifacts <n>";
      # a harness under its coverage floor says "UNDER FLOOR" and fails.
      n_ok=$(grep -E "execs .* exit 0 +artifacts 0$" <<<"$out" | grep -cv "UNDER FLOOR" || true)
      n_all=$(grep -cE "execs .* exit [0-9]+ +artifacts [0-9]+$" <<<"$out" || true)
      n_bad=$((n_all - n_ok))
      if [ "$rc" -ne 0 ] && [ "$n_bad" -eq 0 ]; then n_bad=1; echo "$out" | tail -n 30; fi
      passed=$((passed + n_ok)); failed=$((failed + n_bad))
      summary+=("fuzz: $n_ok passed, $n_bad failed ($(( $(date +%s) - t0 )) s)")
      grep -E "execs .* exit" <<<"$out" || true
      ;;
    *) run_preset "$s" ;;
  esac
done

note "summary ($(( $(date +%s) - t_start )) s)"
printf '%s\n' "${summary[@]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
