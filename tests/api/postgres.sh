#!/usr/bin/env bash
# A throw-away PostgreSQL server for the API tests: `postgres.sh start DIR` prints
# the SQLAlchemy URL; `postgres.sh stop DIR` stops it; `halt DIR` then `resume DIR` make
# an outage. Unix socket only, trust auth, owned by the postgres system user (Debian's
# postgresql package).
set -euo pipefail
action=$1 dir=$2
cd /  # the postgres user runs the commands below and may not be able to enter the caller's directory
bin=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin | sort -V | tail -n 1)
port=55432
case "$action" in
  start)
    rm -rf "$dir" && mkdir -p "$dir" && chown postgres: "$dir"
    runuser -u postgres -- "$bin/initdb" -A trust -U postgres -D "$dir/data" >/dev/null
    runuser -u postgres -- "$bin/pg_ctl" -s -w -D "$dir/data" -l "$dir/server.log" \
      -o "-c listen_addresses='' -k $dir -p $port -c fsync=off" start
    echo "postgresql+psycopg://postgres@/postgres?host=$dir&port=$port"
    ;;
  halt)  # an outage: the server stops (its clients' connections drop), its data stays
    runuser -u postgres -- "$bin/pg_ctl" -s -w -D "$dir/data" -m fast stop
    ;;
  resume)
    runuser -u postgres -- "$bin/pg_ctl" -s -w -D "$dir/data" -l "$dir/server.log" \
      -o "-c listen_addresses='' -k $dir -p $port -c fsync=off" start
    ;;
  stop)
    if [ -d "$dir/data" ]; then
      runuser -u postgres -- "$bin/pg_ctl" -s -w -D "$dir/data" -m fast stop || true
    fi
    ;;
esac
