#!/bin/bash
# Runs inside the cgroup v2 guest (scripts/test-guest copies it to the share
# as run.sh; the guest's wedge-run service runs it as root at boot). Owns the
# in-guest half of the guest test run: mounting the host's checkout, running
# the planned tests, and writing one result per test to the share.
#
# The share (/mnt/share) holds:
#   repo-path   the checkout's absolute path on the host; the read-only 9p
#               share tagged "repo" is mounted at that same path, so the test
#               binaries' compiled-in CARGO_MANIFEST_DIR and CARGO_BIN_EXE_*
#               paths are valid here as they are on the host
#   plan        one test a line: NAME<TAB>BINARY<TAB>TEST (libtest --exact name)
#   jobs        how many tests run at once (default 1)
#   test-timeout  seconds one test may take (default 300)
# and receives:
#   results.tsv   STATUS<TAB>SECONDS<TAB>NAME per finished test, STATUS being
#                 pass, fail or timeout (appended as each test ends)
#   logs/NAME.log the test's whole output
#   guest-info.txt kernel, systemd, containerd and runtime versions, cgroup facts
#   dmesg.txt     the guest kernel's log after the tests
# The exit status is 0 only if every planned test passed.
set -u
share=/mnt/share
repo=$(cat "$share/repo-path")
jobs=$(cat "$share/jobs" 2>/dev/null || echo 1)
per_test=$(cat "$share/test-timeout" 2>/dev/null || echo 300)

mkdir -p "$repo" "$share/logs"
if ! mountpoint -q "$repo"; then
  # cache=loose: the checkout does not change while the guest runs.
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro,cache=loose repo "$repo" || {
    echo "cannot mount the checkout (9p tag repo) at $repo" >&2
    exit 1
  }
fi

# The tests start private containerd instances; the guest's own would only
# take memory and CPU.
systemctl stop containerd.service 2>/dev/null || true

{
  uname -r
  systemctl --version | head -n 1
  containerd --version
  runc --version | head -n 1
  crun --version | head -n 1
  echo "cgroup fs: $(stat -fc %T /sys/fs/cgroup)"
  echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
  echo "state: $(systemctl is-system-running)"
} >"$share/guest-info.txt" 2>&1

: >"$share/results.tsv"
export RUST_BACKTRACE=1
# The tests' time bounds get the guest's pace (tests/common: slack): slower
# than the host under KVM, far slower under TCG's emulation.
case " $(cat /proc/cmdline) " in
*" wedge.accel=tcg "*) export WEDGE_TEST_PACE=4 ;;
*) export WEDGE_TEST_PACE=2 ;;
esac
cd "$repo" || exit 1

# run_one NAME BINARY TEST: one test, alone in its process.
run_one() {
  local name=$1 bin=$2 test=$3 log start rc status
  log="$share/logs/${name//[^A-Za-z0-9_.-]/_}.log"
  start=$(date +%s.%N)
  timeout -k 10 "$per_test" "$bin" --exact "$test" --test-threads=1 >"$log" 2>&1 </dev/null
  rc=$?
  case $rc in
  0) status=pass ;;
  124 | 137) status=timeout ;;
  *) status=fail ;;
  esac
  # A test that matched nothing ran nothing: that is a failure of the plan.
  if [ $rc = 0 ] && ! grep -q '^test result: ok. 1 passed' "$log"; then
    status=fail
    echo "no test named $test in $bin" >>"$log"
  fi
  printf '%s\t%s\t%s\n' "$status" "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" \
    "$name" >>"$share/results.tsv"
  echo "$status $name" >/dev/console
}

running=0
while IFS=$'\t' read -r name bin test; do
  [ -n "$name" ] || continue
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
  run_one "$name" "$bin" "$test" &
  running=$((running + 1))
done <"$share/plan"
wait
# The kernel's log (OOM kills, hung tasks, …) for failures' post-mortems.
dmesg >"$share/dmesg.txt" 2>&1
sync

planned=$(grep -c . "$share/plan")
passed=$(grep -c '^pass' "$share/results.tsv")
echo "passed $passed of $planned"
[ "$passed" = "$planned" ]
