#!/usr/bin/env bash
# The test suite runs every DB test on PostgreSQL too: start the local cluster when it is down.
set -euo pipefail
host=127.0.0.1 port=5432
ready() { pg_isready -q -h "$host" -p "$port" 2>/dev/null; }
ready && exit 0
if ! command -v pg_ctlcluster >/dev/null; then
  echo "PostgreSQL is not running on $host:$port and pg_ctlcluster is not installed" >&2
  exit 1
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
echo "starting PostgreSQL $version ..." >&2
pg_ctlcluster --skip-systemctl-redirect "$version" main start
for _ in $(seq 1 30); do ready && exit 0; sleep 1; done
echo "PostgreSQL did not become ready on $host:$port" >&2
exit 1
