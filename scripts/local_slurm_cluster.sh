#!/usr/bin/env bash
# A real multi-node Slurm cluster on one machine (as root): munged and slurmctld in the root
# network namespace, and N slurmd "nodes" node1..nodeN, each in a network namespace of its own
# (with its own loopback, hostname and address on a private /24: a veth pair to a Linux bridge
# that this script makes), all sharing the file system. Traffic stays inside the machine: the
# namespaces have no route but the bridge's subnet. Every file of the cluster is in DIR; nothing
# in /etc changes.
#
#   scripts/local_slurm_cluster.sh start DIR N [CPUS_PER_NODE]   # prints the SLURM_CONF to export
#   scripts/local_slurm_cluster.sh stop DIR          # daemons, job processes, namespaces, bridge
#   scripts/local_slurm_cluster.sh status DIR        # sinfo, and each node's namespace and slurmd
#   scripts/local_slurm_cluster.sh kill-node DIR NAME     # SIGKILL its slurmd and every process
#                                                         # in its namespace (its jobs): node lost
#   scripts/local_slurm_cluster.sh restart-node DIR NAME  # its slurmd again: the node comes back
#   scripts/local_slurm_cluster.sh exec DIR NAME CMD...   # a command inside a node
#
# CPUS_PER_NODE (default 1) is what each node advertises; the nodes share the machine's cores.
# A node count the machine cannot hold (more than the subnet's addresses, the memory, or
# LOCAL_SLURM_MAX_NODES, default 64), no free subnet or port, not root, or no network namespaces
# / veth / bridge support: refused with the reason before anything starts. A daemon that cannot
# start is named with its log's last lines, and everything this start had made is removed again.
# LOCAL_SLURM_SUBNET=A.B.C picks the nodes' /24 (default: the first free one in 10.213.0.0/16);
# LOCAL_SLURM_CGROUP=autodetect|none as in scripts/local_slurm.sh.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR N [CPUS_PER_NODE] | stop DIR | status DIR | kill-node DIR NAME |" \
    "restart-node DIR NAME | exec DIR NAME CMD..." >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
action=$1
dir=$(realpath -m "$2")
shift 2
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"
# the cluster's id: its namespaces, links and bridge are named after it, so that `stop` finds
# them from DIR alone (even after a start that stopped half-way) and two clusters never collide
cid=$(printf '%s' "$dir" | md5sum | cut -c1-6)
bridge="cbr$cid"
ns_prefix="colnn-$cid-"
node_mem_mb=64          # what one node's slurmd and a job step need, for the node count's check
max_nodes=${LOCAL_SLURM_MAX_NODES:-64}
ctld_ports=(6950 7049)  # outside scripts/local_slurm.sh's 6817..6918: both kinds can run at once

say() { echo "local Slurm cluster: $*" >&2; }
refuse() { say "refused: $*; nothing was started"; exit 1; }

stop_pid() {   # pidfile
  [[ -f $1 ]] || return 0
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

ns_of() { echo "$ns_prefix$1"; }          # node name -> its network namespace
our_namespaces() { ip netns list 2>/dev/null | awk -v p="$ns_prefix" 'index($1, p) == 1 {print $1}'; }

kill_namespace() {   # netns [signal...]: every process in it (slurmd, slurmstepd, job processes)
  local ns=$1 pids sig
  shift
  for sig in "${@:-KILL}"; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -n $pids ]] || return 0
    # shellcheck disable=SC2086 # a list of pids
    kill "-$sig" $pids 2>/dev/null || true
    for _ in $(seq 30); do [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && return 0; sleep 0.1; done
  done
  [[ -z $(ip netns pids "$ns" 2>/dev/null) ]]
}

remove_network() {   # every namespace, veth and the bridge of this cluster (what exists of them)
  local ns link
  for ns in $(our_namespaces); do
    kill_namespace "$ns" TERM KILL || say "processes of $ns did not end: $(ip netns pids "$ns" | tr '\n' ' ')"
    ip netns del "$ns" 2>/dev/null || true
  done
  # a veth whose namespace end was never moved (a start stopped half-way), then the bridge
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
                grep -E "^(cv|cn)$cid-" || true); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
}

stop_all() {
  local f
  for f in "$dir"/run/slurmd-*.pid; do [[ -e $f ]] && stop_pid "$f"; done
  remove_network
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/munged.pid"
  rm -f "$dir/run/"*.pid 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# the checks before a start: all of them before anything is made
ip2int() { local IFS=. a b c d; read -r a b c d <<<"$1"; echo $(((a << 24) | (b << 16) | (c << 8) | d)); }

overlap() {   # A.B.C.D/L A.B.C.D/L: whether two prefixes share an address
  local a=${1%/*} al=${1#*/} b=${2%/*} bl=${2#*/} l m
  [[ $1 == */* ]] || al=32
  [[ $2 == */* ]] || bl=32
  l=$((al < bl ? al : bl))
  m=$(((0xffffffff << (32 - l)) & 0xffffffff))
  ((l == 0)) && m=0
  (($(($(ip2int "$a") & m)) == $(($(ip2int "$b") & m))))
}

used_prefixes() {   # 'prefix where' lines: every address and route of this machine (no default)
  ip -4 -o addr show 2>/dev/null | awk '{print $4, $2}'
  ip -4 route show table all 2>/dev/null | awk '$1 == "local" || $1 == "broadcast" {print $2, $4; next}
    $1 != "default" && $1 !~ /^(unreachable|prohibit|blackhole|throw)$/ {print $1, $3}'
}

subnet_user() {   # A.B.C: what on this machine already uses A.B.C.0/24 ('' when it is free)
  local prefix where
  while read -r prefix where; do
    [[ $prefix =~ ^[0-9.]+(/[0-9]+)?$ ]] || continue
    if overlap "$1.0/24" "$prefix"; then echo "$where $prefix"; return 0; fi
  done < <(used_prefixes)
}

pick_subnet() {
  local s user
  if [[ -n ${LOCAL_SLURM_SUBNET:-} ]]; then
    if ! [[ $LOCAL_SLURM_SUBNET =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] ||
       ((BASH_REMATCH[1] > 255 || BASH_REMATCH[2] > 255 || BASH_REMATCH[3] > 255)); then
      refuse "LOCAL_SLURM_SUBNET=$LOCAL_SLURM_SUBNET is not the first three numbers of a /24 (like 10.213.0)"
    fi
    user=$(subnet_user "$LOCAL_SLURM_SUBNET")
    [[ -z $user ]] || refuse "the node subnet $LOCAL_SLURM_SUBNET.0/24 is in use on this machine ($user)"
    echo "$LOCAL_SLURM_SUBNET"
    return 0
  fi
  for s in $(seq 0 255); do
    [[ -z $(subnet_user "10.213.$s") ]] && { echo "10.213.$s"; return 0; }
  done
  refuse "no free /24 for the nodes in 10.213.0.0/16 (every one is in use on this machine; set LOCAL_SLURM_SUBNET=A.B.C)"
}

port_free() { [[ -z $(ss -Htln "sport = :$1" 2>/dev/null) ]]; }

pick_port() {
  local p
  for ((p = ctld_ports[0]; p <= ctld_ports[1]; p++)); do
    port_free "$p" && { echo "$p"; return 0; }
  done
  refuse "no free port for slurmctld in ${ctld_ports[0]}..${ctld_ports[1]}"
}

check_machine() {   # n cpus: root, the programs, namespace/veth/bridge support, the node count
  local n=$1 cpus=$2 cmd avail mem_limit
  [[ $n =~ ^[0-9]+$ ]] && ((10#$n >= 1)) || refuse "the node count must be a whole number >= 1, got '$n'"
  [[ $cpus =~ ^[0-9]+$ ]] && ((10#$cpus >= 1)) || refuse "CPUS_PER_NODE must be a whole number >= 1, got '$cpus'"
  n=$((10#$n))
  [[ $(id -u) -eq 0 ]] || refuse "the cluster needs root (network namespaces, a bridge, the daemons)"
  for cmd in munged mungekey slurmctld slurmd sinfo scontrol ip ss nsenter unshare md5sum; do
    command -v "$cmd" >/dev/null ||
      refuse "$cmd not found (apt: slurm-wlm munge iproute2 util-linux)"
  done
  # what the start does, tried in a throw-away network namespace (nothing of it stays)
  local probe
  if ! probe=$(unshare --net sh -c 'ip link add t0 type veth peer name t1 &&
      ip link add b0 type bridge && ip link set t0 master b0' 2>&1); then
    refuse "this machine cannot make network namespaces with veth pairs on a bridge: ${probe:-unshare --net failed}"
  fi
  # named namespaces (ip netns) need a / whose mounts can propagate: not in a chroot
  if ! probe=$(ip netns add "colnn-probe-$$" 2>&1 && ip netns exec "colnn-probe-$$" true 2>&1); then
    ip netns del "colnn-probe-$$" 2>/dev/null || true
    refuse "this machine cannot enter named network namespaces (ip netns: ${probe:-failed}; in a chroot / is not a mount point)"
  fi
  ip netns del "colnn-probe-$$" 2>/dev/null || true
  [[ -d /proc/self/ns && -e /proc/self/ns/uts ]] || refuse "no UTS namespaces (/proc/self/ns/uts)"
  if ((n > 253)); then
    refuse "$n nodes: the node subnet (a /24) has addresses for 253"
  fi
  if ((n > max_nodes)); then
    refuse "$n nodes: more than LOCAL_SLURM_MAX_NODES=$max_nodes (set it to go up to 253)"
  fi
  avail=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
  mem_limit=$((avail / 2 / node_mem_mb))
  if ((n > mem_limit)); then
    refuse "$n nodes: this machine's available memory (${avail} MiB) holds $mem_limit at" \
      "$node_mem_mb MiB each (a slurmd and a job step), with half of it left for the jobs"
  fi
}

# ---------------------------------------------------------------------------------------------
started=()   # what this start made, for the message when it has to stop

fail_start() {   # what, reason, [log]: name it, show its log's last lines, remove everything
  local what=$1 reason=$2 log=${3:-}
  say "$what $reason"
  if [[ -n $log && -s $log ]]; then
    echo "last lines of $log:" >&2
    tail -n 15 "$log" | sed 's/^/  /' >&2
  fi
  trap - EXIT
  stop_all
  say "stopped what this start had started (${started[*]:-nothing}); nothing of this cluster" \
    "is running, its namespaces and bridge are removed"
  exit 1
}

on_start_exit() {   # an unexpected failure (set -e) half-way through the start
  local rc=$?
  ((rc == 0)) && return 0
  fail_start "start" "failed (exit $rc) at line ${BASH_LINENO[0]:-?}"
}

wait_pidfile() {   # pidfile: whether its process runs within 2 s
  for _ in $(seq 20); do
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

cgroup_conf() {   # autodetect|none (as scripts/local_slurm.sh)
  if [[ $1 == autodetect ]]; then
    echo "CgroupPlugin=autodetect"
  else
    mkdir -p "$dir/cgroup/systemd"
    printf '%s\n' "# no usable cgroup file system here; nothing in this cluster uses cgroups" \
      "CgroupPlugin=cgroup/v1" "CgroupMountpoint=$dir/cgroup" "CgroupAutomount=no"
  fi
}

slurmd_in_node() {   # name: slurmd in the node's network namespace, with the node's hostname
  nsenter --net="/run/netns/$(ns_of "$1")" unshare --uts sh -c \
    'hostname "$1" && exec slurmd -N "$1"' slurmd "$1" >>"$dir/log/slurmd-$1.start" 2>&1
}

start_node() {   # name: start its slurmd, fail with its log when it does not run
  local name=$1 log="$dir/log/slurmd-$1.log"
  if ! slurmd_in_node "$name"; then
    cat "$dir/log/slurmd-$name.start" >>"$log" 2>/dev/null || true
    return 1
  fi
  wait_pidfile "$dir/run/slurmd-$name.pid"
}

start_nodes() {   # n: node1 with the machine's cgroups where slurmd can use them, else none
  local n=$1 k mode=${LOCAL_SLURM_CGROUP:-autodetect}
  cgroup_conf "$mode" >"$dir/cgroup.conf"
  if ! start_node node1; then
    if [[ -z ${LOCAL_SLURM_CGROUP:-} ]] &&
        grep -q "Unable to initialize cgroup plugin" "$dir/log/slurmd-node1.log" 2>/dev/null; then
      say "slurmd cannot use this machine's cgroups (no cgroup file system mounted); the nodes" \
        "run without them (cgroup.conf: CgroupPlugin=cgroup/v1 on an empty mount point)"
      cgroup_conf none >"$dir/cgroup.conf"
      start_node node1 || fail_start "slurmd of node1" "did not start" "$dir/log/slurmd-node1.log"
    else
      fail_start "slurmd of node1" "did not start" "$dir/log/slurmd-node1.log"
    fi
  fi
  started+=(node1)
  for ((k = 2; k <= n; k++)); do
    start_node "node$k" || fail_start "slurmd of node$k" "did not start" "$dir/log/slurmd-node$k.log"
    started+=("node$k")
  done
}

make_network() {   # subnet n: the bridge (.1) and one namespace per node (.1+k)
  local subnet=$1 n=$2 k ns
  started+=(bridge)
  ip link add "$bridge" type bridge
  ip addr add "$subnet.1/24" dev "$bridge"
  ip link set "$bridge" up
  for ((k = 1; k <= n; k++)); do
    ns=$(ns_of "node$k")
    ip netns add "$ns"
    ip link add "cv$cid-$k" type veth peer name "cn$cid-$k"
    ip link set "cn$cid-$k" netns "$ns"
    ip -n "$ns" link set "cn$cid-$k" name eth0
    ip -n "$ns" addr add "$subnet.$((1 + k))/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip link set "cv$cid-$k" master "$bridge"
    ip link set "cv$cid-$k" up
  done
  started+=("$n namespaces")
}

write_conf() {   # subnet n cpus port
  local subnet=$1 n=$2 cpus=$3 port=$4 host mem k
  host=$(hostname -s)
  mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  {
    cat <<EOF
# multi-node cluster written by scripts/local_slurm_cluster.sh: slurmctld in the root network
# namespace (reached at the bridge $bridge, $subnet.1), node1..node$n in namespaces $ns_prefix*
ClusterName=colnn-nodes
SlurmctldHost=$host($subnet.1)
SlurmctldPort=$port
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job (a node lost) waits this long before it starts again (default 120)
AuthInfo=socket=$dir/munge.sock,cred_expire=30
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
# each node's own /tmp for Slurm (the PMIx plugin's spmix_appdir_* of a step, which two nodes
# on one file system would otherwise both make in /tmp)
TmpFS=$dir/tmp/%n
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
# a node whose slurmd stops answering is DOWN in about 30 s (its jobs: NODE_FAIL); slurmctld
# pings every SlurmdTimeout/3 s
SlurmdTimeout=10
MessageTimeout=10
# the nodes advertise CPUS_PER_NODE CPUs each, sharing the machine's
SlurmdParameters=config_overrides
EOF
    for ((k = 1; k <= n; k++)); do
      echo "NodeName=node$k NodeAddr=$subnet.$((1 + k)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    done
    # LLN: each job to the least loaded node, so that arrays spread over the nodes
    echo "PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP LLN=YES"
  } >"$conf"
}

start() {
  local n=${1:-} cpus=${2:-1} subnet port state
  [[ -n $n ]] || usage
  check_machine "$n" "$cpus"
  n=$((10#$n))
  cpus=$((10#$cpus))
  if [[ -n $(our_namespaces) ]] || ip link show "$bridge" >/dev/null 2>&1 ||
      { [[ -f $dir/slurmctld.pid ]] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; }; then
    refuse "a cluster of $dir is already running (or was not stopped): $0 stop $dir"
  fi
  # one start at a time on this machine picks a subnet and makes its bridge
  mkdir -p /run/lock
  exec 9>/run/lock/colnn-local-slurm-cluster.lock
  flock 9
  subnet=$(pick_subnet)
  port=$(pick_port)
  trap on_start_exit EXIT
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/run"
  chmod 755 "$dir"   # munged: the socket's directories must be searchable by all
  rm -f "$dir"/log/*.start
  for ((k = 1; k <= n; k++)); do mkdir -p "$dir/spool/node$k" "$dir/tmp/node$k"; done
  printf 'ID=%s\nBRIDGE=%s\nSUBNET=%s.0/24\nNODES=%s\nCPUS_PER_NODE=%s\nSLURMCTLD_PORT=%s\n' \
    "$cid" "$bridge" "$subnet" "$n" "$cpus" "$port" >"$dir/cluster.env"
  make_network "$subnet" "$n"
  flock -u 9
  exec 9>&-
  if [[ ! -f $dir/munge.key ]]; then
    mungekey --create --keyfile="$dir/munge.key"
    chmod 400 "$dir/munge.key"
  fi
  stop_pid "$dir/munged.pid"
  munged --key-file="$dir/munge.key" --socket="$dir/munge.sock" --pid-file="$dir/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed" >>"$dir/log/munged.start" 2>&1 ||
    fail_start munged "did not start" "$dir/log/munged.log"
  started+=(munged)
  wait_pidfile "$dir/munged.pid" || fail_start munged "exited right after starting" "$dir/log/munged.log"
  write_conf "$subnet" "$n" "$cpus" "$port"
  slurmctld >>"$dir/log/slurmctld.start" 2>&1 ||
    fail_start slurmctld "did not start" "$dir/log/slurmctld.log"
  started+=(slurmctld)
  wait_pidfile "$dir/slurmctld.pid" ||
    fail_start slurmctld "exited right after starting" "$dir/log/slurmctld.log"
  start_nodes "$n"
  for _ in $(seq 150); do
    state=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)
    if [[ $(grep -c ' idle$' <<<"$state") -eq $n ]]; then
      trap - EXIT
      echo "SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.2
  done
  fail_start "nodes" "started, but not all became idle within 30 s: $(tr '\n' ' ' <<<"$state")" \
    "$dir/log/slurmctld.log"
}

node_arg() {   # name: a node of this cluster
  [[ -f $conf ]] || { echo "no cluster in $dir (start it first)" >&2; exit 1; }
  [[ ${1:-} =~ ^node[0-9]+$ ]] && ip netns list | grep -q "^$(ns_of "$1")\b" ||
    { echo "no node '${1:-}' in the cluster of $dir (nodes: $(our_namespaces | sed "s/^$ns_prefix//" | tr '\n' ' '))" >&2; exit 1; }
}

kill_node() {   # name: the node is lost: its slurmd and its jobs' processes die at once
  node_arg "${1:-}"
  local ns pids
  ns=$(ns_of "$1")
  pids=$(ip netns pids "$ns" | tr '\n' ' ')
  kill_namespace "$ns" KILL || { echo "processes of $1 did not die: $(ip netns pids "$ns")" >&2; exit 1; }
  rm -f "$dir/run/slurmd-$1.pid"
  echo "killed $1: ${pids:-no processes} (Slurm marks it DOWN in about 30 s, 2-3 x SlurmdTimeout;" \
    "its jobs end NODE_FAIL)"
}

restart_node() {   # name: its slurmd again (ReturnToService=2: the node comes back)
  node_arg "${1:-}"
  local state=""
  stop_pid "$dir/run/slurmd-$1.pid"
  start_node "$1" || { echo "slurmd of $1 did not start; last lines of its log:" >&2
                       tail -n 15 "$dir/log/slurmd-$1.log" >&2; exit 1; }
  for _ in $(seq 100); do
    state=$(sinfo -h -n "$1" -o %T 2>/dev/null | head -1)
    [[ $state =~ ^(idle|mixed|allocated|completing) ]] && return 0
    sleep 0.2
  done
  echo "$1 did not come back within 20 s (state: ${state:-none})" >&2
  exit 1
}

status() {
  [[ -f $dir/cluster.env ]] && sed 's/^/  /' "$dir/cluster.env"
  sinfo -N -o '%N %T %c %E' 2>/dev/null || echo "slurmctld does not answer"
  local ns pid
  for ns in $(our_namespaces); do
    pid=$(cat "$dir/run/slurmd-${ns#"$ns_prefix"}.pid" 2>/dev/null || true)
    printf '%s %s slurmd %s, %s processes\n' "${ns#"$ns_prefix"}" \
      "$(ip -n "$ns" -4 -o addr show eth0 2>/dev/null | awk '{print $4}')" \
      "$([[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "pid $pid" || echo "not running")" \
      "$(ip netns pids "$ns" | wc -l)"
  done
}

case $action in
  start) start "$@" ;;
  stop) stop_all ;;
  status) status ;;
  kill-node) kill_node "$@" ;;
  restart-node) restart_node "$@" ;;
  exec)
    node_arg "${1:-}"
    ns=$(ns_of "$1")
    shift
    [[ $# -ge 1 ]] || usage
    exec nsenter --net="/run/netns/$ns" unshare --uts sh -c 'hostname "$1"; shift; exec "$@"' \
      sh "${ns#"$ns_prefix"}" "$@"
    ;;
  *) usage ;;
esac
