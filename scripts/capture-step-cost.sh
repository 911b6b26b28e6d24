#!/usr/bin/env bash
# What each step of capture costs a 1-row writer (README "Performance", latency beside a bare
# relay; issue 19), in a throwaway durable cluster (fsync on): backend CPU (utime + stime from
# /proc) per committed 1-row insert of a `messages` row, N (default 10,000) in a DO loop that
# commits each row, ROUNDS rounds (default 3) of, in turn:
#   plain       a copy of `messages` without triggers
#   relay       a copy with the bare relay's row trigger, pg_notify(row_to_json(new)) (as
#               src/bin/pgfeed-bench/relay.rs installs it)
#   trigger     (stmt_trigger) a copy with an AFTER … FOR EACH STATEMENT trigger and its transition table, whose
#               function returns at once
#   rendering   the same trigger running capture's 1-row query (`pgfeed.serialize` of the row,
#               and the count of up to 2 rows)
#   no-row      (no_row) `pgfeed.capture` without its `insert into pgfeed.events` (so no stamp either)
#   no-stamp    `messages` tracked by pgfeed, with the stamp trigger disabled
#   pgfeed      `messages` tracked by pgfeed: capture, the stamp, its commit row and its NOTIFY
# A session holding the idle set's lock (as a waiting listener does) listens throughout, so that
# the stamp notifies as under `pgfeed-bench latency`.
# CAPTURE_SQL names another capture.sql to measure (default: this checkout's sql/capture.sql).
# Run as a user that may run initdb (not root): `su postgres -c scripts/capture-step-cost.sh`.
set -euo pipefail
n=${N:-10000}
rounds=${ROUNDS:-3}
listener=
. "$(dirname "$0")/throwaway-cluster.sh" -c shared_buffers=256MB
on_exit='[ -n "$listener" ] && kill "$listener" 2>/dev/null || true'
psql+=(-d postgres)
"${psql[@]}" -1 -f "${CAPTURE_SQL:-$repo/sql/capture.sql}" >/dev/null
"${psql[@]}" -f "$repo/migrations/0001_schema.sql" >/dev/null
"${psql[@]}" <<'SQL' >/dev/null
insert into studies (id, label, title) values (1, 's', 'S');
create table plain (like messages including all);
create table relay (like messages including all);
create function relay_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('bench_relay', row_to_json(new)::text);
    return null;
end $$;
create trigger relay_notify after insert or update or delete on relay for each row execute function relay_notify();
create table stmt_trigger (like messages including all);
create function returns_at_once() returns trigger language plpgsql security definer as $$
begin
    return null;
end $$;
create trigger t after insert on stmt_trigger referencing new table as pgfeed_new
    for each statement execute function returns_at_once();
create table rendering (like messages including all);
create function renders() returns trigger language plpgsql security definer as $$
declare
    rec jsonb;
    n int8;
begin
    select pgfeed.serialize(x), (select pg_catalog.count(*) from (select from pgfeed_new limit 2) c)
    into rec, n from pgfeed_new x limit 1;
    return null;
end $$;
create trigger t after insert on rendering referencing new table as pgfeed_new
    for each statement execute function renders();
create table no_row (like messages including all);
SQL
# `pgfeed.capture` as installed, without the 1-row road's insert into the log.
"${psql[@]}" -At -c "select pg_get_functiondef('pgfeed.capture'::regproc)" > "$work/capture.sql"
awk '/^    insert into pgfeed\.events \(txid, pos, type, tbl, op, row_id, topics, data, old, moved_from, before\)$/ { skip = 1; print "    null;"; next }
     skip && /end\);$/ { skip = 0; next }
     !skip' "$work/capture.sql" |
  sed 's/pgfeed\.capture()/pgfeed.capture_without_event_row()/' > "$work/no_row.sql"
if (( $(grep -c 'insert into pgfeed.events' "$work/no_row.sql") != $(grep -c 'insert into pgfeed.events' "$work/capture.sql") - 1 )); then
  echo "capture-step-cost: the 1-row road's insert was not found in pgfeed.capture" >&2
  exit 1
fi
"${psql[@]}" -f "$work/no_row.sql" >/dev/null
"${psql[@]}" -c "create trigger t after insert on no_row referencing new table as pgfeed_new for each statement
  execute function pgfeed.capture_without_event_row('messages', 'message', 'id', 'study_id', 'studies')"
# The waiting listener: in the idle set, reading its notifications every 50 ms.
{ echo "listen pgfeed; listen bench_relay; select pg_advisory_lock_shared(7133003);"
  while :; do echo "select 1;"; sleep 0.05; done; } | "${psql[@]}" >/dev/null 2>&1 &
listener=$!
sleep 1
tick=$(getconf CLK_TCK)
cost() { # table: µs of backend CPU per committed 1-row insert
  local table=$1 row="(1, 'bench', 'hello there, this is a message body of moderate length')"
  "${psql[@]}" -At <<SQL
select pg_backend_pid() as pid \gset
\setenv BPID :pid
do \$\$ begin for i in 1..200 loop insert into "$table" (study_id, author, body) values $row; commit; end loop; end \$\$;
\! cut -d' ' -f14,15 /proc/\$BPID/stat > $work/cpu0
do \$\$ begin for i in 1..$n loop insert into "$table" (study_id, author, body) values $row; commit; end loop; end \$\$;
\! cut -d' ' -f14,15 /proc/\$BPID/stat > $work/cpu1
SQL
  local a b c d
  read -r a b < "$work/cpu0"
  read -r c d < "$work/cpu1"
  echo $(((c + d - a - b) * 1000000 / tick / n))
}
echo "# µs of backend CPU per committed 1-row insert, $n per variant; load average at the end"
echo "# round: plain relay trigger rendering no-row no-stamp pgfeed"
for round in $(seq 1 "$rounds"); do
  line="$round:"
  for t in plain relay stmt_trigger rendering no_row; do line="$line $(cost "$t")"; done
  "${psql[@]}" -c "alter table pgfeed.events disable trigger stamp"
  line="$line $(cost messages)"
  "${psql[@]}" -c "alter table pgfeed.events enable trigger stamp"
  echo "$line $(cost messages) $(cut -d' ' -f1-3 /proc/loadavg)"
done
