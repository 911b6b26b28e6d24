# Sourced by the capture cost scripts: a throwaway PostgreSQL cluster in a temp dir, on a Unix
# socket only, stopped and removed when the script exits. Sets `repo`, `bin`, `work` and `psql`
# (an array: psql on that cluster as postgres); `on_exit` may name more to do at exit.
# Usage: `. "$(dirname "$0")/throwaway-cluster.sh" -c fsync=off …` (the server's `-c` options).
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
work=$(mktemp -d)
on_exit=:
trap 'eval "$on_exit"; "$bin/pg_ctl" -D "$work/data" stop -m fast >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
"$bin/initdb" -D "$work/data" -U postgres >/dev/null
"$bin/pg_ctl" -D "$work/data" -o "-k $work -c listen_addresses='' $*" -l "$work/log" start >/dev/null
psql=(psql -X -q -h "$work" -U postgres)
