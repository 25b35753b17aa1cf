#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for trying run_with_submitit.py on one machine and for the tests.
#
#   bash tools/slurm/slurm_local.sh start   # install (Debian/Ubuntu, as root) and start munged, slurmctld, slurmd
#   bash tools/slurm/slurm_local.sh stop    # stop the daemons started here
#   bash tools/slurm/slurm_local.sh env     # print the exports that point SLURM's commands at this cluster
#
# Everything (config, state, spool, logs, pids) lives in $SLURM_LOCAL_DIR (default /tmp/slurm_local). No systemd,
# no cgroups, no accounting database: tools/slurm/bin/sacct answers submitit's state queries from scontrol.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${SLURM_LOCAL_DIR:-/tmp/slurm_local}
cpus=${SLURM_LOCAL_CPUS:-4}
conf=$dir/slurm.conf

print_env() {
  echo "export SLURM_CONF=$conf"
  echo "export PATH=$here/bin:\$PATH"
}

install_packages() {
  local missing=()
  for cmd in slurmctld slurmd sbatch munged; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "slurm_local: missing ${missing[*]}; install slurmctld slurmd slurm-client munge (needs root and apt)" >&2
    exit 1
  fi
  echo "slurm_local: installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  local host mem
  host=$(hostname -s)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat > "$conf" <<CONF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2
KillWait=5
ReturnToService=2
MinJobAge=3600
JobRequeue=1
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  if pgrep -x munged >/dev/null; then return 0; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
}

start() {
  install_packages
  if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    echo "slurm_local: already running ($conf)"
    print_env
    return 0
  fi
  write_config
  start_munge
  export SLURM_CONF=$conf
  slurmctld -D -f "$conf" >>"$dir/log/slurmctld.out" 2>&1 &
  echo $! > "$dir/slurmctld.pid"
  slurmd -D -f "$conf" >>"$dir/log/slurmd.out" 2>&1 &
  echo $! > "$dir/slurmd.pid"
  for _ in $(seq 1 60); do
    if [ "$(sinfo -h -o %T 2>/dev/null | head -1)" = "idle" ]; then
      echo "slurm_local: node $(hostname -s) idle with $cpus CPUs; config $conf"
      print_env
      return 0
    fi
    sleep 0.5
  done
  echo "slurm_local: the node did not become idle; see $dir/log/" >&2
  exit 1
}

stop() {
  for name in slurmd slurmctld; do
    if [ -f "$dir/$name.pid" ]; then
      kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
  echo "slurm_local: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
