#!/bin/bash
# One-node SLURM cluster on this Debian 12 machine (root, no systemd needed).
# Usage: slurm-up.sh [--no-accounting]
#   default: munged + mariadbd + slurmdbd + slurmctld + slurmd (sacct works: submitit
#            then notices jobs killed by SLURM: TIMEOUT / CANCELLED / OOM)
#   --no-accounting: munged + slurmctld + slurmd only (sacct fails; a job killed by
#            SLURM then leaves the submitit launcher polling forever)
# Daemon PIDs go to $RUN/*.pid; stop them with slurm-down.sh.
set -euo pipefail
ACCOUNTING=1; [ "${1:-}" = "--no-accounting" ] && ACCOUNTING=0
RUN=${RUN:-${TMPDIR:-/tmp}/slurm-local}; mkdir -p "$RUN"
HOST=$(hostname -s)
T0=$(date +%s)

# 1. packages (about 6 s + 12 s for the accounting part from the Debian mirror)
PKGS="slurm-wlm munge"; [ $ACCOUNTING = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 $PKGS >"$RUN/apt.log" 2>&1
fi
T1=$(date +%s)

# 2. munge: key (the package usually made one already), then munged in the foreground
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 755 /run/munge
nohup setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F >"$RUN/munged.out" 2>&1 &
echo $! >"$RUN/munged.pid"
for i in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge | grep -q Success

# 3. slurm.conf (+ slurmdbd.conf)
MEM=$(free -m | awk '/^Mem:/{print int($4*0.9)}')          # a bit below free memory
CPUS=$(nproc)
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm /run/slurm
if [ $ACCOUNTING = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
$ACCT
JobCompType=jobcomp/none
SchedulerType=sched/backfill
MinJobAge=300
KillWait=30
NodeName=$HOST CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

if [ $ACCOUNTING = 1 ]; then
  # 4. MariaDB (foreground, small buffer pool) + the accounting database
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  nohup /usr/sbin/mariadbd --user=mysql --innodb-buffer-pool-size=64M --bind-address=127.0.0.1 \
      >"$RUN/mariadbd.out" 2>&1 &
  echo $! >"$RUN/mariadbd.pid"
  for i in $(seq 100); do mariadb -u root -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdbpass';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmdbpass
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
  nohup /usr/sbin/slurmdbd -D >"$RUN/slurmdbd.out" 2>&1 &
  echo $! >"$RUN/slurmdbd.pid"
  for i in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -n list cluster format=cluster | grep -qw local || sacctmgr -i add cluster local >/dev/null
fi

# 5. slurmctld and slurmd in the foreground (-D), logs in /var/log/slurm and $RUN
nohup /usr/sbin/slurmctld -D >"$RUN/slurmctld.out" 2>&1 &
echo $! >"$RUN/slurmctld.pid"
for i in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
nohup /usr/sbin/slurmd -D >"$RUN/slurmd.out" 2>&1 &
echo $! >"$RUN/slurmd.pid"
for i in $(seq 100); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.2; done
sinfo
srun -N1 hostname >/dev/null
T2=$(date +%s)
echo "SLURM up: install $((T1-T0)) s, configure+start $((T2-T1)) s, accounting=$ACCOUNTING"
