#!/bin/bash
# Waits until the database at WA_DB_HOSTNAME:WA_DB_PORT (default port 3306)
# accepts TCP connections, then runs its arguments; mirrors the helper that
# Meta's compose files put in front of the launcher. Needs bash (/dev/tcp)
# and coreutils only.
host="${WA_DB_HOSTNAME:-127.0.0.1}"
port="${WA_DB_PORT:-3306}"
tries="${WA_DB_WAIT_SECONDS:-120}"
if [ "$#" -eq 0 ]; then
  echo "usage: $0 command [argument...]" >&2
  exit 2
fi
i=0
while [ "$i" -lt "$tries" ]; do
  if (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null; then
    exec "$@"
  fi
  echo "waiting for the database at ${host}:${port}" >&2
  sleep 1
  i=$((i + 1))
done
echo "database at ${host}:${port} is not reachable" >&2
exit 1
