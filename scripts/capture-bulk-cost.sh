#!/usr/bin/env bash
# What capture costs bulk statements (README "Performance", issue 19), through the capture code of
# OLD_REV (default f57e522, before serialize_bulk and event_keys) and of this checkout, in a
# throwaway durable cluster (fsync on, shared_buffers 256 MB):
# 1. ROUNDS rounds (default 10) of a 100,000-row INSERT … SELECT generate_series, UPDATE of every
#    row and DELETE of every row, each its own transaction, on a copy of `studies` tracked by
#    pgfeed and one without triggers, in each database; which database and which table go first
#    alternates. One line per round, database and table: the three times in ms.
# 2. The parts of a bulk insert's capture, each alone, three rounds: the plain insert, `to_jsonb`
#    of its rows, the same through `pgfeed.serialize` and `pgfeed.serialize_bulk`, and writing as
#    many rendered event rows into a copy of `pgfeed.events`, with its index and without.
# Run as a user that may run initdb (not root): `su postgres -c scripts/capture-bulk-cost.sh`.
set -euo pipefail
old_rev=${OLD_REV:-f57e522}
rounds=${ROUNDS:-10}
. "$(dirname "$0")/throwaway-cluster.sh" -c shared_buffers=256MB
git -c safe.directory="$repo" -C "$repo" show "$old_rev:sql/capture.sql" > "$work/old.sql"
cp "$repo/sql/capture.sql" "$work/new.sql"
for v in old new; do
  "${psql[@]}" -c "create database $v"
  "${psql[@]}" -d "$v" -1 -f "$work/$v.sql" >/dev/null
  "${psql[@]}" -d "$v" -f "$repo/migrations/0001_schema.sql" >/dev/null
  for t in plain tracked; do
    "${psql[@]}" -d "$v" -c "create table bulk_$t (like studies including all);
      create trigger bump_version before update on bulk_$t for each row execute function bump_version()"
  done
  "${psql[@]}" -d "$v" -c "select pgfeed.track('bulk_tracked')" >/dev/null
done
timed() { # database, then SQL lines: prints the time of each statement in ms
  local db=$1; shift
  printf '\\timing on\n%s\n' "$@" | "${psql[@]}" -d "$db" | grep -o 'Time: [0-9.]*' | cut -d' ' -f2 | tr '\n' ' '
}
echo "# round database table: insert update delete (ms), load average"
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then dbs="old new"; tables="plain tracked"; else dbs="new old"; tables="tracked plain"; fi
  for v in $dbs; do
    for t in $tables; do
      "${psql[@]}" -d "$v" -c "vacuum analyze bulk_$t"
      echo "$round $v $t: $(timed "$v" \
        "insert into bulk_$t (label, title) select 'b' || i, 't' || i from generate_series(1, 100000) i;" \
        "update bulk_$t set title = title || 'x';" "delete from bulk_$t;") $(cut -d' ' -f1-3 /proc/loadavg)"
    done
  done
done
"${psql[@]}" -d new -c "
  create table rend (like studies including all);
  insert into rend (label, title) select 'b' || i, 't' || i from generate_series(1, 100000) i;
  create table src as select '1'::xid8 txid, (row_number() over ())::int pos, 'x_created' type, 'bench' tbl,
    'insert' op, to_jsonb(x.id) row_id, array['bench', 'bench:' || x.id] topics, to_jsonb(x) data from rend x;
  create table ev_index (like pgfeed.events including all);
  create table ev_bare (like pgfeed.events);
  create table plain2 (like studies including all)"
"${psql[@]}" -d new -c "vacuum analyze rend" -c "vacuum analyze src"
echo "# parts (ms): plain insert, to_jsonb, pgfeed.serialize, pgfeed.serialize_bulk, event rows written, the same without the index; load average"
for round in 1 2 3; do
  "${psql[@]}" -d new -c "truncate ev_index, ev_bare, plain2" -c "checkpoint"
  echo "$round: $(timed new \
    "insert into plain2 (label, title) select 'b' || i, 't' || i from generate_series(1, 100000) i;" \
    "select count(to_jsonb(x)) from rend x;" "select count(pgfeed.serialize(x)) from rend x;" \
    "select count(pgfeed.serialize_bulk(x)) from rend x;" \
    "insert into ev_index select * from src;" "insert into ev_bare select * from src;") $(cut -d' ' -f1-3 /proc/loadavg)"
done
