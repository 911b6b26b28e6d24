#!/usr/bin/env bash
# What capturing the row as it was on every update (live views, README "Live views") costs
# writers: 1-row UPDATE transactions (pgbench, 1 client, 5 s) and one 100,000-row UPDATE, through
# the capture code of OLD_REV (default 679bf52, before views) and of this checkout, interleaved,
# in a throwaway cluster with fsync off (the capture's CPU, not the disk). Run as a user that may
# run initdb (not root): `su postgres -c scripts/capture-update-cost.sh`.
set -euo pipefail
old_rev=${OLD_REV:-679bf52}
. "$(dirname "$0")/throwaway-cluster.sh" -c fsync=off
git -c safe.directory="$repo" -C "$repo" show "$old_rev:sql/capture.sql" > "$work/old.sql"
cp "$repo/sql/capture.sql" "$work/new.sql"
printf '\\set id random(1, 100000)\nupdate studies set title = title || %sx%s where id = :id;\n' "'" "'" > "$work/one.sql"
for v in old new; do
  "${psql[@]}" -c "create database $v"
  "${psql[@]}" -d "$v" -1 -f "$work/$v.sql" >/dev/null
  "${psql[@]}" -d "$v" -f "$repo/migrations/0001_schema.sql" >/dev/null
  "${psql[@]}" -d "$v" -c "insert into studies (label, title) select 'l'||i, 't'||i from generate_series(1, 100000) i"
done
for round in 1 2 3 4 5; do
  for v in old new; do
    t0=$(date +%s.%N); "${psql[@]}" -d "$v" -c "update studies set title = title || 'y'"; t1=$(date +%s.%N)
    tps=$("$bin/pgbench" -h "$work" -U postgres -n -f "$work/one.sql" -T 5 -c 1 "$v" 2>/dev/null | grep -o "tps = [0-9.]*" | head -1)
    echo "$v round $round: 100,000-row UPDATE $(echo "$t1 - $t0" | bc) s; 1-row UPDATE $tps"
  done
done
