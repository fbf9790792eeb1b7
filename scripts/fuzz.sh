#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that reads bytes from outside
# (fuzz/fuzz_targets/*.rs, one target per parser), with libFuzzer on stable
# Rust: the sanitizer-coverage flags cargo-fuzz passes, without ASan (which
# needs nightly; safe Rust's bounds checks, debug assertions and overflow checks
# still turn memory and arithmetic errors into crashes).
#
#   scripts/fuzz.sh short [TARGET...]   30 s per target (CI)
#   scripts/fuzz.sh long  [TARGET...]   10 min per target
#   scripts/fuzz.sh build               the instrumented build only
#
# FUZZ_SECONDS overrides the time per target. One instrumented build (in
# fuzz/target, apart from the main build) serves every target; the targets run
# one after another at nice 19. Seeds are fuzz/corpus/TARGET (kept in git,
# read only here); what a run adds goes to fuzz/target/corpus/TARGET, crashes
# to fuzz/target/artifacts/TARGET/. Prints per target: executions, exec/s,
# coverage (cov: edges, ft: features), new inputs, crashes. Exits non-zero if
# any target crashed (or leaked, timed out, ran out of memory).
set -euo pipefail
# g++ for libFuzzer itself (and what the tests need: one list of packages).
bash "$(dirname "$0")/install-deps.sh"
cd "$(dirname "$0")/../fuzz"
root=$(pwd)

mode=${1:-short}
[ $# -gt 0 ] && shift
case "$mode" in
  short) secs=${FUZZ_SECONDS:-30} ;;
  long) secs=${FUZZ_SECONDS:-600} ;;
  build) secs=0 ;;
  *) echo "usage: $0 short|long|build [TARGET...]" >&2; exit 2 ;;
esac

triple=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps these flags off build scripts and proc macros (which are not
# linked with libFuzzer); the same flags as cargo-fuzz's defaults, less -Z.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks -Cforce-frame-pointers=yes"
echo "== fuzz: instrumented build ($triple, fuzz/target)"
start=$(date +%s)
nice -n 19 cargo build --locked --release --bins --target "$triple" --target-dir "$root/target"
echo "   build took $(( $(date +%s) - start )) s"
[ "$mode" = build ] && exit 0

if [ $# -eq 0 ]; then
  set -- $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^wharf-fuzz$')
fi
bin="$root/target/$triple/release"
failed=()
printf '%-18s %12s %9s %7s %7s %6s %8s\n' target executions exec/s cov ft new crashes
for t in "$@"; do
  [ -x "$bin/$t" ] || { echo "no fuzz target $t" >&2; exit 2; }
  work="$root/target/corpus/$t"
  art="$root/target/artifacts/$t"
  log="$root/target/logs/$t.$mode.log"
  mkdir -p "$work" "$art" "$(dirname "$log")" "corpus/$t"
  rm -f "$art"/*
  # The config target must not find the machine's systemd credentials.
  rc=0
  env -u CREDENTIALS_DIRECTORY nice -n 19 "$bin/$t" \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -len_control=200 -artifact_prefix="$art/" \
    "$work" "corpus/$t" >"$log" 2>&1 || rc=$?
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  last=$(grep -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$last")
  crashes=$(find "$art" -type f | wc -l)
  printf '%-18s %12s %9s %7s %7s %6s %8s\n' "$t" "$(stat number_of_executed_units)" \
    "$(stat average_exec_per_sec)" "${cov:-?}" "${ft:-?}" "$(stat new_units_added)" "$crashes"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed+=("$t")
    echo "   $t failed (exit $rc); log: $log; inputs: $art" >&2
    grep -m1 -A12 -E 'panicked|ERROR: libFuzzer' "$log" >&2 || tail -20 "$log" >&2
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: $(( $# - ${#failed[@]} )) passed, ${#failed[@]} failed (${failed[*]})"
  exit 1
fi
echo "fuzz: $# passed, 0 failed"
