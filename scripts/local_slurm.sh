#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for circuitlab's `slurm` tests and for trying hydra/launcher=slurm:
#   scripts/local_slurm.sh start    # munged, slurmctld and slurmd, as root; prints `export SLURM_CONF=...`
#   scripts/local_slurm.sh status   # running or not (exit 0 / 1), and sinfo
#   scripts/local_slurm.sh stop     # stops the daemons it started (by the pids it recorded), keeps nothing running
#   scripts/local_slurm.sh env      # the line to paste: export SLURM_CONF=...
# Needs Debian's / Ubuntu's slurm-wlm and munge packages (apt-get install -y slurm-wlm munge) and root. Every file
# lives under one dir: $CIRCUITLAB_SLURM_DIR (default ${TMPDIR:-/tmp}/circuitlab-slurm): the munge key and socket,
# slurm.conf, state, spool and logs. The daemons listen on $CIRCUITLAB_SLURM_PORT and the next port (default 16817,
# 16818: not Slurm's own 6817, 6818, so a real cluster's daemons on this machine are left alone). One partition,
# `debug` (the default), with this machine's CPUs and memory, no GPUs, accounting off (as on many small clusters); two
# jobs may share a CPU (OverSubscribe=FORCE:2: circuitlab's test jobs are short and spend most of their time starting).
# $CIRCUITLAB_SLURM_MAX_ARRAY_SIZE sets MaxArraySize (default 1001, Slurm's default). `start` is idempotent: a
# running cluster is left as it is.
set -euo pipefail

DIR=${CIRCUITLAB_SLURM_DIR:-${TMPDIR:-/tmp}/circuitlab-slurm}
PORT=${CIRCUITLAB_SLURM_PORT:-16817}
MAX_ARRAY_SIZE=${CIRCUITLAB_SLURM_MAX_ARRAY_SIZE:-1001}
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket
export SLURM_CONF=$CONF

say() { echo "local_slurm: $*" >&2; }

# the pid in FILE, when that process is alive and runs the program NAME (a recycled pid is not ours)
live_pid() {
  local file=$1 name=$2 pid
  [ -s "$file" ] || return 1
  pid=$(tr -dc 0-9 <"$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ] && echo "$pid"
}

running() {
  live_pid "$DIR/munged.pid" munged >/dev/null && live_pid "$DIR/slurmctld.pid" slurmctld >/dev/null &&
    live_pid "$DIR/slurmd.pid" slurmd >/dev/null
}

write_config() {
  local host node
  host=$(hostname -s)
  # this machine's CPUs and memory as slurmd itself reads them (a node configured larger is drained)
  node=$(slurmd -C 2>/dev/null | head -n 1 | sed -e 's/ UpTime=.*//' -e "s/^NodeName=[^ ]*/NodeName=$host/")
  [[ $node == NodeName=* ]] || { say "slurmd -C could not read this machine's CPUs and memory"; exit 1; }
  cat >"$CONF" <<EOF
# written by scripts/local_slurm.sh: a single-node cluster for tests
ClusterName=circuitlab
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=2
KillWait=5
MinJobAge=600
MaxArraySize=$MAX_ARRAY_SIZE
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2
EOF
}

wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
  local seconds=$1
  shift
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

node_ready() { sinfo -h -N -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

start() {
  if running; then
    say "already running ($CONF)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  [ "$(id -u)" = 0 ] || { say "needs root (the daemons run as root)"; exit 1; }
  for program in munged slurmctld slurmd sinfo sbatch; do
    command -v "$program" >/dev/null || { say "$program not found: apt-get install -y slurm-wlm munge"; exit 1; }
  done
  stop quiet
  mkdir -p "$DIR"/{munge,state,spool,log}
  chmod 700 "$DIR" "$DIR/munge"
  if [ ! -s "$DIR/munge/munge.key" ]; then
    (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge/munge.key")
  fi
  write_config
  munged --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for 10 live_pid "$DIR/munged.pid" munged || { say "munged did not start (see $DIR/log/munged.log)"; exit 1; }
  slurmctld -c -i
  wait_for 20 scontrol ping || { say "slurmctld did not start (see $DIR/log/slurmctld.log)"; stop quiet; exit 1; }
  slurmd
  if ! wait_for 30 node_ready; then
    say "slurmd did not register its node (see $DIR/log/slurmd.log)"
    stop quiet
    exit 1
  fi
  say "running: partition debug, $(sinfo -h -o '%c CPUs, %m MB' | head -n 1), MaxArraySize=$MAX_ARRAY_SIZE; files under $DIR"
  echo "export SLURM_CONF=$CONF"
}

stop() {
  local quiet=${1:-} name pid stopped=0
  for name in slurmd slurmctld munged; do
    if pid=$(live_pid "$DIR/$name.pid" "$name"); then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
      [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
      stopped=1
    fi
    rm -f "$DIR/$name.pid"
  done
  if [ -z "$quiet" ]; then
    if [ $stopped = 1 ]; then say "stopped (files kept under $DIR)"; else say "not running"; fi
  fi
}

status() {
  if running; then
    say "running ($CONF)"
    sinfo
    return 0
  fi
  say "not running"
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
