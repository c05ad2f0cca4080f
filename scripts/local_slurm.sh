#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost (munged + slurmctld + slurmd, as root), with all
# its files in one private directory: nothing in /etc changes. The test suite starts one to run
# sbatch job arrays for real; users can start one to try the Slurm executor on a workstation.
#
#   scripts/local_slurm.sh start DIR [CPUS]   # prints the SLURM_CONF to export
#   scripts/local_slurm.sh stop DIR
#   scripts/local_slurm.sh status DIR
#   scripts/local_slurm.sh restart-slurmd DIR # running jobs go on (fault-injection tests)
# CPUS (optional) advertises more CPUs than the machine has (to see array throttles at work).
set -euo pipefail

usage() { echo "usage: $0 start|stop|status|restart-slurmd DIR [CPUS]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
action=$1
dir=$(realpath -m "$2")
cpus=${3:-}
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

stop_pid() {   # pidfile
  [[ -f $1 ]] || return 0
  local pid
  pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

start() {
  for cmd in munged mungekey slurmctld slurmd sinfo; do
    command -v "$cmd" >/dev/null || { echo "$cmd not found (apt: slurm-wlm munge)" >&2; exit 1; }
  done
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  chmod 755 "$dir"   # munged: the socket's directories must be searchable by all
  if [[ ! -f $dir/munge.key ]]; then
    mungekey --create --keyfile="$dir/munge.key"
    chmod 400 "$dir/munge.key"
  fi
  stop_pid "$dir/munged.pid"
  munged --key-file="$dir/munge.key" --socket="$dir/munge.sock" --pid-file="$dir/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed"
  local host node
  host=$(hostname -s)
  node=$(slurmd -C | head -1)
  [[ -n $cpus ]] && node=$(sed -E "s/CPUs=[0-9]+/CPUs=$cpus/; s/ (Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+//g" <<<"$node")
  cat > "$conf" <<EOF
# single-node cluster written by scripts/local_slurm.sh
ClusterName=colnn-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MpiDefault=pmix
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmdTimeout=300
$( [[ -n $cpus ]] && echo "SlurmdParameters=config_overrides" )
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  slurmctld
  slurmd -N "$host"
  for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; then
      echo "SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.2
  done
  echo "the local Slurm node did not become idle; logs in $dir/log" >&2
  exit 1
}

restart_slurmd() {
  [[ -f $conf ]] || { echo "no cluster in $dir (start it first)" >&2; exit 1; }
  stop_pid "$dir/slurmd.pid"
  slurmd -N "$(hostname -s)"
  for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      return 0
    fi
    sleep 0.2
  done
  echo "slurmd did not come back; logs in $dir/log" >&2
  exit 1
}

case $action in
  start) start ;;
  stop)
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munged.pid"
    ;;
  status) sinfo ;;
  restart-slurmd) restart_slurmd ;;
  *) usage ;;
esac
