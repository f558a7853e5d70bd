#!/usr/bin/env bash
# CI: the system packages the ingestion tests drive for real -- mosquitto (the MQTT broker standing
# in for IoT Core's mutual-TLS endpoint), a Java runtime for local Spark (the Glue job), openssl
# (test certificates), nginx (the serving front: the serve tests spawn container/serve on the host).
# Installed from Debian only when missing; they are not started here.
set -euo pipefail
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v java >/dev/null || need+=(default-jre-headless)
command -v openssl >/dev/null || need+=(openssl)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)  # bench.serve_throughput's load generator (bench.report runs it)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
