#!/bin/bash
# The demo pipeline's wall time against older code, back to back on one machine (README:
# Demo time): old, new, new, old, each `tlp run --local --demo` with this checkout's venv.
#   git worktree add --detach /work/old 9496ca3
#   bash bench/demo_time.sh /work/old
set -euo pipefail
old=$(realpath "${1:?usage: bench/demo_time.sh OLD_CHECKOUT}")
new=$(realpath "$(dirname "$0")/..")
tlp="$new/.venv/bin/tlp"
logs=$(mktemp -d)
for which in old new new old; do
  dir=${!which}
  start=$(date +%s.%N)
  (cd "$dir" && PYTHONPATH="$dir" "$tlp" run --local --demo --pipeline-root "$logs/runs" \
    > "$logs/$which.log" 2>&1)
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  accuracy=$(grep -o "test accuracy: [0-9.]*" "$logs/$which.log" | tail -1)
  printf '%s %s: %.1f s, %s, load %s\n' "$which" "$dir" "$seconds" "$accuracy" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
  # Each step's seconds, as this code's progress lines give them (older code has none).
  steps=$(grep -E "^[a-z-]+ +done" "$logs/$which.log" | tr -s ' ' | paste -sd ';' || true)
  if [ -n "$steps" ]; then echo "  $steps"; fi
done
echo "logs: $logs"
