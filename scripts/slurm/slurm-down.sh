#!/bin/bash
# (Copied from ../shared/slurm/ so that `make test-slurm` runs from this repository alone, e.g. in CI.)
# Stop the daemons that slurm-up.sh started, by their recorded PIDs (reverse order).
RUN=${RUN:-${TMPDIR:-/tmp}/slurm-local}
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  f="$RUN/$d.pid"; [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && echo "$d ($pid) still running" || echo "$d ($pid) stopped"
  fi
  rm -f "$f"
done
