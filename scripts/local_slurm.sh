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
# A daemon that cannot start is named with the last lines of its log, and what this start had
# started is stopped again. Where slurmd cannot use the machine's cgroups (none mounted:
# containers, chroots), it runs without them.
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

# what `start` has started so far (daemon names), stopped again if it cannot finish
started=()

fail_start() {   # daemon, reason: the daemon, its log's last lines, then stop what was started
  local daemon=$1 reason=$2 log="$dir/log/$1.log"
  echo "local Slurm: $daemon $reason" >&2
  if [[ -s $log ]]; then
    echo "last lines of $log:" >&2
    tail -n 15 "$log" | sed 's/^/  /' >&2
  fi
  local i
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do stop_pid "$dir/${started[i]}.pid"; done
  echo "local Slurm: stopped what this start had started (${started[*]:-nothing});" \
    "nothing of this cluster is running" >&2
  exit 1
}

start_daemon() {   # name, command...: start it, record it, fail with its log when it does not run
  local name=$1 _
  shift
  if ! "$@" >>"$dir/log/$name.start" 2>&1; then
    cat "$dir/log/$name.start" >>"$dir/log/$name.log" 2>/dev/null || true
    fail_start "$name" "did not start ($*)"
  fi
  started+=("$name")
  for _ in $(seq 20); do
    [[ -f $dir/$name.pid ]] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null && return 0
    sleep 0.1
  done
  fail_start "$name" "exited right after starting"
}

cgroup_conf() {   # autodetect|none: cgroup.conf for slurmd
  if [[ $1 == autodetect ]]; then
    echo "CgroupPlugin=autodetect"
  else
    # the cgroup/v1 plugin only stats <mount point>/systemd when it starts, and touches the
    # mount point only when a cgroup-based plugin asks it to, which none here does
    mkdir -p "$dir/cgroup/systemd"
    printf '%s\n' "# no usable cgroup file system here; nothing in this cluster uses cgroups" \
      "CgroupPlugin=cgroup/v1" "CgroupMountpoint=$dir/cgroup" "CgroupAutomount=no"
  fi
}

start_slurmd() {   # host: the kernel's cgroups where slurmd can use them, else none
  # Slurm 22.05's slurmd initializes its cgroup plugin even with proctrack/linuxproc and
  # task/none, and 'autodetect' fails where no cgroup file system is mounted (containers,
  # chroots: "Unable to initialize cgroup plugin"): then it runs without.
  # LOCAL_SLURM_CGROUP=autodetect|none forces one (the tests see both paths with it).
  local mode=${LOCAL_SLURM_CGROUP:-autodetect}
  cgroup_conf "$mode" > "$dir/cgroup.conf"
  if [[ -z ${LOCAL_SLURM_CGROUP:-} ]] && ! slurmd -N "$1" >>"$dir/log/slurmd.start" 2>&1; then
    if grep -q "Unable to initialize cgroup plugin" "$dir/log/slurmd.log" 2>/dev/null; then
      echo "local Slurm: slurmd cannot use this machine's cgroups (no cgroup file system" \
        "mounted); it runs without them (cgroup.conf: CgroupPlugin=cgroup/v1 on an empty" \
        "mount point)" >&2
      cgroup_conf none > "$dir/cgroup.conf"
    fi
  elif [[ -z ${LOCAL_SLURM_CGROUP:-} ]]; then
    started+=(slurmd)
    return 0
  fi
  start_daemon slurmd slurmd -N "$1"
}

port_free() {   # port: nothing listens on it on this machine
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
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
  rm -f "$dir"/log/*.start
  start_daemon munged munged --key-file="$dir/munge.key" --socket="$dir/munge.sock" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed"
  # Slurm's own ports (6817, 6818) unless another cluster on this machine has them
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  local ctld_port=6817
  while ! port_free "$ctld_port" || ! port_free $((ctld_port + 1)); do
    ctld_port=$((ctld_port + 2))
    ((ctld_port < 6917)) || fail_start slurmctld "found no two free ports in 6817..6918"
  done
  local host node
  host=$(hostname -s)
  node=$(slurmd -C | head -1)
  [[ -n $cpus ]] && node=$(sed -E "s/CPUs=[0-9]+/CPUs=$cpus/; s/ (Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+//g" <<<"$node")
  cat > "$conf" <<EOF
# single-node cluster written by scripts/local_slurm.sh
ClusterName=colnn-local
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
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
  start_daemon slurmctld slurmctld
  start_slurmd "$host"
  local state=""
  for _ in $(seq 100); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1)
    if [[ $state == idle ]]; then
      echo "SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.2
  done
  fail_start slurmd "started, but the node did not become idle within 20 s (state: ${state:-none})"
}

restart_slurmd() {
  [[ -f $conf ]] || { echo "no cluster in $dir (start it first)" >&2; exit 1; }
  stop_pid "$dir/slurmd.pid"
  slurmd -N "$(hostname -s)"
  local state=""
  for _ in $(seq 100); do
    # a node with running jobs comes back 'mixed' or 'allocated' (or still 'completing'): any
    # of these is a slurmd that answers
    state=$(sinfo -h -o %T 2>/dev/null | head -1)
    if [[ $state =~ ^(idle|mixed|allocated|completing) ]]; then
      return 0
    fi
    sleep 0.2
  done
  echo "slurmd did not come back within 20 s (node state: ${state:-none}); last lines of" \
    "$dir/log/slurmd.log:" >&2
  tail -n 15 "$dir/log/slurmd.log" >&2 || true
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
