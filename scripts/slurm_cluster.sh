#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian's packages, without systemd:
#   sudo apt-get install -y slurmctld slurmd slurm-client munge slurmdbd mariadb-server
#   scripts/slurm_cluster.sh start     # munge, mariadb, slurmdbd, slurmctld, slurmd; waits for idle
#   scripts/slurm_cluster.sh status    # the daemons and `sinfo`
#   scripts/slurm_cluster.sh stop      # stops each daemon by its pid file
# Needs root (the daemons run as root and munge). The node is `localhost`, with the CPUs and
# memory of this machine; accounting (slurmdbd + MariaDB) is on so that `sacct` reports finished
# and cancelled jobs (submitit reads job states from it). State, logs and pid files live in
# $NNLAB_SLURM_DIR (default /var/tmp/nnlab-slurm); the configs are written to /etc/slurm, where
# the client commands (sbatch, sinfo ...) look, unless one there was not written by this script.
set -euo pipefail

STATE=${NNLAB_SLURM_DIR:-/var/tmp/nnlab-slurm}
CONF_DIR=/etc/slurm
MARK="# written by nnlab scripts/slurm_cluster.sh"
CLUSTER=nnlab
DB_PASS=nnlab-slurmdbd
MYSQL_SOCK=$STATE/mysql/mysqld.sock

log() { echo "slurm_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

need() {
  local missing=()
  for cmd in munged slurmctld slurmd slurmdbd sinfo sbatch mariadbd mariadb-install-db; do
    command -v "$cmd" >/dev/null || [[ -x /usr/sbin/$cmd ]] || missing+=("$cmd")
  done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}; install them with: apt-get install -y slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
  [[ $(id -u) == 0 ]] || die "run as root (the SLURM and munge daemons need it)"
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for ((i = 0; i < seconds * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "timed out after ${seconds}s waiting for $what"
}

write_config() {
  if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARK" "$CONF_DIR/slurm.conf"; then
    die "$CONF_DIR/slurm.conf exists and was not written by this script; not overwriting it"
  fi
  mkdir -p "$CONF_DIR" "$STATE"/{ctld,slurmd,log,run}
  # This machine as `slurmd -C` sees it (CPUs, sockets, cores, threads, memory), named localhost;
  # a little memory is left for the system.
  local node
  node=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]*/NodeName=localhost/')
  local mem
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  node=$(sed -e "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" -e 's/ UpTime=.*//' <<<"$node")
  cat >"$CONF_DIR/slurm.conf" <<CONF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# No cgroups in a container: track processes by parent, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=300
SlurmdTimeout=60
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  cat >"$CONF_DIR/slurmdbd.conf" <<CONF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start_munge() {
  if pid_alive /run/munge/munged.pid; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  [[ -s /etc/munge/munge.key ]] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged
  wait_for 20 munged bash -c 'munge -n | unmunge'
}

start_mariadb() {
  if pid_alive "$STATE/mysql/mysqld.pid"; then return; fi
  mkdir -p "$STATE/mysql"
  chown mysql:mysql "$STATE/mysql"
  if [[ ! -d $STATE/mysql/data/mysql ]]; then
    mariadb-install-db --user=mysql --datadir="$STATE/mysql/data" >"$STATE/log/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed; see $STATE/log/mariadb-install.log"
  fi
  # Its own socket, port 3306 on localhost only, no /etc/mysql conf needed.
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql/data" \
    --socket="$MYSQL_SOCK" --pid-file="$STATE/mysql/mysqld.pid" --bind-address=127.0.0.1 \
    --port=3306 --log-error="$STATE/log/mariadb.log" --innodb-buffer-pool-size=64M \
    </dev/null >/dev/null 2>&1 &
  wait_for 60 mariadb mariadb --socket="$MYSQL_SOCK" -u root -e 'SELECT 1'
  mariadb --socket="$MYSQL_SOCK" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
}

start_daemon() { # start_daemon NAME PIDFILE COMMAND...
  local name=$1 pidfile=$2; shift 2
  if pid_alive "$pidfile"; then return; fi
  "$@" || die "$name did not start; see $STATE/log/$name.log"
  wait_for 30 "$name" pid_alive "$pidfile"
}

start() {
  need
  write_config
  start_munge
  start_mariadb
  start_daemon slurmdbd "$STATE/run/slurmdbd.pid" /usr/sbin/slurmdbd
  wait_for 30 slurmdbd sacctmgr -n show cluster
  # Register the cluster before slurmctld first talks to slurmdbd.
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  start_daemon slurmctld "$STATE/run/slurmctld.pid" /usr/sbin/slurmctld
  wait_for 30 slurmctld scontrol ping
  start_daemon slurmd "$STATE/run/slurmd.pid" /usr/sbin/slurmd -N localhost
  # Idle (or mixed/allocated, if jobs were left) means the node is up and takes jobs.
  wait_for 60 "the node to become idle" bash -c "sinfo -h -N -n localhost -o %T | grep -Eq '^(idle|mixed|allocated)'"
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  log "up: $(sinfo -h -N -o '%N %T cpus=%c mem=%mMB' | head -1)"
}

stop_pidfile() { # stop_pidfile NAME PIDFILE
  local name=$1 pidfile=$2
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; return; fi
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for ((i = 0; i < 80; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped $name"; return; }
    sleep 0.25
  done
  log "$name (pid $pid) did not stop in 20 s; killing it"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

stop() {
  # Jobs still running would outlive slurmd: cancel them first.
  if pid_alive "$STATE/run/slurmctld.pid"; then
    scancel --user=root >/dev/null 2>&1 || true
    scancel -u "$(id -un)" >/dev/null 2>&1 || true
  fi
  stop_pidfile slurmd "$STATE/run/slurmd.pid"
  stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
  stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
  stop_pidfile mariadb "$STATE/mysql/mysqld.pid"
  stop_pidfile munged /run/munge/munged.pid
}

status() {
  local rc=0
  for d in munged:/run/munge/munged.pid mariadb:$STATE/mysql/mysqld.pid \
    slurmdbd:$STATE/run/slurmdbd.pid slurmctld:$STATE/run/slurmctld.pid \
    slurmd:$STATE/run/slurmd.pid; do
    if pid_alive "${d#*:}"; then echo "${d%%:*}: running (pid $(cat "${d#*:}"))"; else echo "${d%%:*}: stopped"; rc=1; fi
  done
  if ((rc == 0)); then sinfo -N -l; fi
  return $rc
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
