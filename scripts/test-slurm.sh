#!/bin/bash
# make test-slurm: start a one-node SLURM cluster on the local machine, run the tests marked
# `slurm` (tests/test_slurm.py) against it, and stop its daemons by their PIDs whatever
# happens (a trap on EXIT, so a failing or interrupted test stops them too).
# Needs root and Debian (scripts/slurm/slurm-up.sh installs slurm-wlm, munge, slurmdbd and
# mariadb-server when missing). A cluster that already answers `sinfo` is used as it is
# and left running. It rewrites /etc/slurm/slurm.conf (job ids go on from SLURM's saved state,
# which must match the accounting database):
# run it on a test machine or in CI, never on a node of a real cluster.
# Extra arguments go to pytest, e.g. scripts/test-slurm.sh -k scancel.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
T0=$(date +%s)
if timeout 10 sinfo -h -o %T >/dev/null 2>&1; then
  echo "test-slurm: a SLURM cluster is already running; using it (not stopping it)"
else
  export RUN=${RUN:-$(mktemp -d "${TMPDIR:-/tmp}/digitpairs-slurm.XXXXXX")}
  trap 'scripts/slurm/slurm-down.sh; echo "test-slurm: daemons stopped ($(( $(date +%s) - T0 )) s in all)"' EXIT
  scripts/slurm/slurm-up.sh || { echo "test-slurm: could not start SLURM (see $RUN)" >&2; exit 1; }
fi
DIGITPAIRS_REQUIRE_SLURM=1 "$PY" -m pytest -q -m slurm -p no:cacheprovider "$@"
