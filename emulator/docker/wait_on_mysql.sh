#!/bin/bash
# Waits until the database accepts TCP connections, then runs its arguments;
# mirrors the helper that Meta's compose files put in front of the launcher.
host="${WA_DB_HOSTNAME:-127.0.0.1}"
port="${WA_DB_PORT:-3306}"
for _ in $(seq 1 "${WA_DB_WAIT_SECONDS:-120}"); do
  if (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null; then
    exec "$@"
  fi
  echo "waiting for the database at ${host}:${port}" >&2
  sleep 1
done
echo "database at ${host}:${port} is not reachable" >&2
exit 1
