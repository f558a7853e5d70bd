#!/usr/bin/env bash
# Make a Docker engine answer on a Debian machine without systemd (CI): install docker.io,
# docker-compose (SageMaker SDK local mode), debootstrap (offline base image) and docker-registry
# (a stand-in ECR for the push test) when
# missing, start dockerd when no engine answers, wait until it does.
set -euo pipefail
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-registry >/dev/null \
   || ! command -v docker-compose >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q docker.io docker-compose debootstrap docker-registry >/dev/null
fi
if docker info >/dev/null 2>&1; then
  exit 0
fi
# A dockerd killed with its session leaves its pid file behind, and a new one refuses to start.
# The pid may even still exist as an unreaped zombie: only a live (non-zombie) process counts.
alive() { local state; state=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$state" ] && [ "${state#Z}" = "$state" ]; }
clear_stale_pid_files() {
  local pidfile
  for pidfile in /var/run/docker.pid /run/docker.pid /var/run/docker/containerd/containerd.pid; do
    if [ -f "$pidfile" ] && ! alive "$(cat "$pidfile")"; then rm -f "$pidfile"; fi
  done
}
log=${DOCKERD_LOG:-/tmp/dockerd.log}
# A containerd that is still dying holds its database lock for a moment: the first start can time
# out waiting for containerd, so try a few times.
for attempt in 1 2 3; do
  clear_stale_pid_files
  nohup dockerd >"$log" 2>&1 &
  daemon=$!
  for _ in $(seq 1 90); do
    if docker info >/dev/null 2>&1; then
      echo "dockerd started (log: $log)"
      exit 0
    fi
    kill -0 "$daemon" 2>/dev/null || break
    sleep 1
  done
  kill "$daemon" 2>/dev/null || true
  echo "dockerd start attempt $attempt failed: $(tail -1 "$log")" >&2
  sleep 5
done
echo "error: dockerd did not start; last lines of $log:" >&2
tail -20 "$log" >&2
exit 1
