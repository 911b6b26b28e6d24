-- pgfeed capture: the event log, the commit stamp and the NOTIFY wake-up.
--
-- This file is the one source of the capture code. `pgfeed migrate` / `pgfeed serve` apply it
-- before the schema migrations, and it can be installed by hand into any PostgreSQL >= 13
-- database with `psql -1 -f sql/capture.sql`. Every statement is idempotent, so applying it again
-- (a new pgfeed version, several servers starting at once) is safe.
--
-- How it works (for users, README "How it works"):
--   1. `pgfeed.capture()`, an AFTER ROW trigger on every tracked table, appends the change to
--      `pgfeed.events`, tagged with its transaction id and its position in the transaction.
--   2. The transaction's first event queues `pgfeed.stamp()`, a deferred constraint trigger that
--      runs just before commit, after every change the transaction made: it draws the next
--      `commit_seq` and records `(seq, txid)` in `pgfeed.commits`. Nothing is held across writers
--      until the commit, so concurrent commits share their WAL flushes (group commit).
--   3. Readers ask for commits with seq greater than their cursor, joined to their events,
--      ordered by (seq, pos), and never read past a seq that is not final yet: commits that
--      happen at the same moment may become visible out of seq order, so the listener settles
--      each missing seq first (`pgfeed.settle`: waits for its writer, or marks it as never to
--      commit), and every other read stops at the first seq without a row (`pgfeed.contiguous`).
--      Seq order is commit order wherever order can matter: a transaction that read or
--      overwrote another's changes draws its seq after that one committed.
--   4. NOTIFY carries no data: a missed notification costs latency only. It is sent only while
--      some pgfeed listener is idle (waiting for one): under load listeners poll the log instead,
--      and writers skip NOTIFY's queue lock (held through their commit), queue entry and the
--      wake-up of every listening backend (see `pgfeed.draw()`).

-- Serialize concurrent installers (several servers starting at once). Run inside one
-- transaction (`psql -1`), so the lock is held to the end of the file.
select pg_advisory_xact_lock(7133001);
set local client_min_messages = warning;

create schema if not exists pgfeed;

-- One row: the log's epoch goes into every cursor, so a cursor from another database (or from a
-- restored backup) is recognised; `pruned_upto` is the newest seq that retention has deleted.
create table if not exists pgfeed.meta (
    singleton   boolean primary key default true check (singleton),
    epoch       text not null default substr(md5(random()::text || clock_timestamp()::text), 1, 12),
    pruned_upto bigint not null default 0
);
insert into pgfeed.meta default values on conflict do nothing;

-- Numbers commits, not rows. Drawn at commit, after the transaction's last change.
create sequence if not exists pgfeed.commit_seq;

create table if not exists pgfeed.commits (
    seq          bigint primary key,
    txid         xid8 not null,
    committed_at timestamptz not null
);
-- Only the primary key, which also makes a seq's row the claim on it: a writer whose insert finds
-- the seq taken draws again, and a reader claiming a missing seq waits for a writer that holds
-- it. A row of txid 0 marks a seq that never committed. No reader looks commits up by txid or
-- time (retention walks them in seq order), so no other index costs writers an insert.

-- The log: one row per change, tagged with its transaction and its position in it. Readers order
-- by (commits.seq, pos). No global id: a `bigserial` here cost writers a sequence draw and a
-- second index insert per event (about 7 % of 1-row TPS at 1 writer, pgbench against the same
-- trigger without it), and nothing reads it; a future reader that needs an insertion order can
-- add a column then.
create table if not exists pgfeed.events (
    txid   xid8 not null,
    pos    int not null,
    type   text not null,
    tbl    text not null,
    op     text not null,
    row_id jsonb not null,
    topics text[] not null,
    data   jsonb not null
);
create index if not exists events_txid_pos on pgfeed.events (txid, pos);

-- Rights follow the row (README "Security: auth and limits"): an update that moves a row to another
-- parent (a message to another study) also logs the row as it was (`old`) and the parent topic it
-- left (`moved_from`, also in `topics`), so its old room gets an exit. Both are null for every
-- other change.
-- Added only when missing: `alter table` locks the log against writers even when it changes nothing.
do $$
begin
    if not exists (select from pg_attribute where attrelid = 'pgfeed.events'::regclass and attname = 'old' and not attisdropped) then
        alter table pgfeed.events add column old jsonb;
    end if;
    if not exists (select from pg_attribute where attrelid = 'pgfeed.events'::regclass and attname = 'moved_from' and not attisdropped) then
        alter table pgfeed.events add column moved_from text;
    end if;
    -- Live views (README "Live views"): every other update logs the row as it was too (`before`),
    -- so a row that stops matching a view's filter is announced, and the view's count stays exact,
    -- whoever wrote the change. A move's row as it was is `old`, never both.
    if not exists (select from pg_attribute where attrelid = 'pgfeed.events'::regclass and attname = 'before' and not attisdropped) then
        alter table pgfeed.events add column before jsonb;
    end if;
end
$$;

-- Tables in the feed: topic name -> table, for the server's topic validation and snapshots.
create table if not exists pgfeed.tracked (
    topic       text primary key,
    relid       regclass not null unique,
    type_prefix text not null,
    pk          text[] not null,
    parent_col  text,
    parent_topic text
);

-- Rows become JSON as `pgfeed_capture`, a role that holds no rights at all (NOLOGIN, member of
-- nothing, no attribute, and not even USAGE on this schema). `to_jsonb` runs code that whoever
-- owns a column's type may write: a cast to json (`create cast (t as json) with function f(t)`).
-- Run as the capture trigger's owner (usually a superuser), a table owner's cast would run as that
-- owner: one INSERT could make an ordinary role SUPERUSER. As `pgfeed_capture`, such code can do
-- nothing its author cannot do already (it may not even write the log: `pgfeed.capture` does that
-- after `pgfeed.serialize` returned). Snapshots render rows through it too (src/db/snapshot.rs).
-- Creating the role needs CREATEROLE (or a superuser) once; an installer without it is told how.
do $$
begin
    if not exists (select from pg_roles where rolname = 'pgfeed_capture') then
        begin
            create role pgfeed_capture nologin noinherit;
        exception when duplicate_object or unique_violation then
            -- Roles are the cluster's: a server starting on another database made it meanwhile
            -- (the advisory lock above is per database).
            null;
        when insufficient_privilege then
            raise exception 'pgfeed: the role pgfeed_capture is missing and % may not create it (as a superuser: '
                            'create role pgfeed_capture nologin; grant pgfeed_capture to %)', current_user, quote_ident(current_user)
                using hint = format('As a superuser, run: create role pgfeed_capture nologin; grant pgfeed_capture to %I; '
                                    'then start pgfeed again. Rows are rendered to JSON as that role, which holds no rights, '
                                    'so code hooked into the rendering (a cast to json) runs powerless.', current_user);
        end;
    end if;
    if exists (select from pg_roles where rolname = 'pgfeed_capture'
               and (rolsuper or rolcreaterole or rolcreatedb or rolcanlogin or rolreplication or rolbypassrls))
       or exists (select from pg_auth_members m join pg_roles r on r.oid = m.member where r.rolname = 'pgfeed_capture') then
        raise exception 'pgfeed: the role pgfeed_capture holds rights; it must hold none'
            using hint = 'It renders rows to JSON, running code that table owners may write. Make it NOLOGIN, '
                         'NOSUPERUSER, NOCREATEROLE, NOCREATEDB, NOREPLICATION, NOBYPASSRLS, and a member of no role.';
    end if;
    -- Replacing and re-owning its function needs the installer to act as the role.
    if not pg_has_role(current_user, 'pgfeed_capture', 'USAGE') then
        begin
            execute format('grant pgfeed_capture to %I', current_user);
        exception when insufficient_privilege then
            raise exception 'pgfeed: % must be a member of the role pgfeed_capture (as a superuser: grant pgfeed_capture to %)',
                            current_user, quote_ident(current_user)
                using hint = format('As a superuser, run: grant pgfeed_capture to %I; then start pgfeed again.', current_user);
        end;
    end if;
end
$$;

-- `r` as JSON, as `pgfeed_capture` (see above). plpgsql, not SQL: a security-definer SQL function
-- is never inlined and starts an executor per call; this is a simple expression.
-- Read-only while it runs (the writer's transaction is read-write again after it): code run
-- here can change nothing, above all not `drop owned by pgfeed_capture`, which would drop this
-- function and fail every tracked write until pgfeed starts again. The extra call costs nothing
-- measurable: 50,000-row inserts into a tracked table take about 45 µs a row on the test box with
-- it or without it.
create or replace function pgfeed.serialize(r anyelement) returns jsonb
    language plpgsql
    security definer
    set transaction_read_only = on
as $$
begin
    return pg_catalog.to_jsonb(r);
end
$$;

-- The same for the rows of a bulk statement (`pgfeed.capture`), cheaper per row and dearer per
-- statement. Installed by a superuser it is PostgreSQL's own `to_jsonb` behind the same
-- security-definer, read-only wrapper (`language internal`), without plpgsql's call set-up and
-- the unpacking of the row into a record variable on every row: 100,000 rows of `studies`
-- rendered in 0.79-0.89 s through it against 1.07-1.18 s through `pgfeed.serialize` (and
-- 0.60-0.63 s by `to_jsonb` alone, interleaved, load average 12). Its first call in each
-- statement finds `to_jsonb` by name among PostgreSQL's built-in functions, which costs a 1-row
-- statement more than the plpgsql call saves, hence two functions. Creating an internal-language
-- function needs a superuser: another installer gets the plpgsql body (a superuser's internal one
-- stays).
do $$
begin
    if (select rolsuper from pg_catalog.pg_roles where rolname operator(pg_catalog.=) current_user) then
        create or replace function pgfeed.serialize_bulk(r anyelement) returns jsonb
            language internal
            security definer
            set transaction_read_only = on
        as 'to_jsonb';
    elsif coalesce((select l.lanname from pg_catalog.pg_proc p join pg_catalog.pg_language l on l.oid operator(pg_catalog.=) p.prolang
                    where p.oid operator(pg_catalog.=) pg_catalog.to_regprocedure('pgfeed.serialize_bulk(anyelement)')), '')
          operator(pg_catalog.<>) 'internal' then
        create or replace function pgfeed.serialize_bulk(r anyelement) returns jsonb
            language plpgsql
            security definer
            set transaction_read_only = on
        as $f$
        begin
            return pg_catalog.to_jsonb(r);
        end
        $f$;
    end if;
end
$$;
do $$
declare
    f regprocedure;
begin
    foreach f in array array['pgfeed.serialize(anyelement)'::regprocedure, 'pgfeed.serialize_bulk(anyelement)'::regprocedure] loop
        if (select proowner from pg_proc where oid = f) <> (select oid from pg_roles where rolname = 'pgfeed_capture') then
            -- A new owner needs CREATE on the schema, for the moment of the change only.
            grant create on schema pgfeed to pgfeed_capture;
            execute format('alter function %s owner to pgfeed_capture', f);
            revoke create on schema pgfeed from pgfeed_capture;
        end if;
        execute format('revoke all on function %s from public', f);
        execute format('grant execute on function %s to %I', f, current_user);
    end loop;
end
$$;

-- A row of the log as `pgfeed.capture` names it, from the row rendered (`d`) and the trigger's
-- arguments (topic, primary key columns, parent column and parent topic): `rid`, the key's value
-- (a JSON array of them for a composite key), and its topics: the table's, the row's, and its
-- parent's room when it has one: the one place a bulk statement's rows get them, whichever the
-- statement. SQL, one SELECT, immutable, not strict, no SET clause and returning a set, so the
-- planner inlines it into the query that calls it (a function call per row would cost more than
-- the derivation); written schema-qualified throughout, since it is planned with the writer's
-- search_path. One row (the 1-row road and row triggers) is named by plpgsql expressions at the
-- end of `pgfeed.capture` instead: joined to the 1-row road's query, this made every 1-row
-- statement about 30 µs dearer (5,000 1-row inserts in one transaction, 0.87-0.92 s against
-- 0.71-0.74 s, load average 12), as a query of its own more.
create or replace function pgfeed.event_keys(d jsonb, topic text, pk text, parent_col text, parent_topic text)
    returns table (rid jsonb, topics text[])
    language sql
    immutable
as $$
    select k.rid,
           array[topic, topic operator(pg_catalog.||) ':' operator(pg_catalog.||) k.key]
             operator(pg_catalog.||) case when d operator(pg_catalog.->>) parent_col is not null
                 then array[parent_topic operator(pg_catalog.||) ':' operator(pg_catalog.||) (d operator(pg_catalog.->>) parent_col)]
                 else '{}'::pg_catalog.text[] end
    from (
        select case when pg_catalog.strpos(pk, ',') operator(pg_catalog.=) 0 then d operator(pg_catalog.->) pk
                    else (select pg_catalog.jsonb_agg(d operator(pg_catalog.->) c.c order by c.i)
                          from pg_catalog.unnest(pg_catalog.string_to_array(pk, ',')) with ordinality c(c, i)) end as rid,
               case when pg_catalog.strpos(pk, ',') operator(pg_catalog.=) 0 then d operator(pg_catalog.->>) pk
                    else (select pg_catalog.string_agg(d operator(pg_catalog.->>) c.c, ',' order by c.i)
                          from pg_catalog.unnest(pg_catalog.string_to_array(pk, ',')) with ordinality c(c, i)) end as key
    ) k
$$;

-- The capture trigger, at two levels. Arguments: topic, type prefix, primary key columns
-- (comma-separated), parent column and parent topic (both '' when the table has no room to report
-- to), and for the row-level `pgfeed_capture_rekey` trigger a sixth, 'rekey' ('move' on triggers
-- made by versions before statement capture).
--
-- Each tracked table has one AFTER ... FOR EACH STATEMENT trigger per event, with its transition
-- table(s) (`pgfeed_new`, `pgfeed_old`; PostgreSQL refuses transition tables on a trigger for
-- several events). A statement's rows are logged in one of two ways:
-- - one row (a 1-row writer, the usual case): fetched from the transition table and logged with
--   one `insert … values`, as the row trigger of earlier versions did;
-- - more rows: one `insert … select` over the transition tables renders and logs them all, with
--   `pos` numbered on from the transaction's previous events in the order the statement changed
--   its rows (updates: the order of the new rows), each update paired with the row as it was by
--   primary key.
-- Why one row takes its own road, and what it still costs (backend CPU per 1-row statement, one
-- transaction each, 3,000-4,000 in a row, interleaved, fsync off, on a box loaded by builds): the
-- set-based insert made a 1-row insert 168 µs against 142 µs with the per-row trigger of earlier
-- versions, a 1-row update 254 against 202 µs; the 1-row road (one query that counts up to 2 rows
-- and renders the first) measured 193-293 against 163-247 µs (insert) and 290-317 against
-- 243-347 µs (update) in another run (load average 11). A row trigger still does less for one
-- row (it gets its row without a query), but one kept for small statements would fire for every
-- row of a bulk statement as well (PostgreSQL can't tell the row count before the statement), or
-- need a count per statement that another statement on the same table (a nested one) can upset,
-- losing events; this version takes the statement road for every statement.
--
-- An update that changes a row's primary key cannot be paired by key (and two rows may even swap
-- keys): the row trigger `pgfeed_capture_rekey`, whose WHEN clause sees the key change, logs such
-- a row from OLD and NEW and marks the table's setting `pgfeed.rekey_<table oid>` with its pos;
-- the statement trigger that follows leaves out the new rows it logged (by their key). Known
-- limit: a key-changing update of the same table run by a trigger between those two (nested in
-- the first statement's trigger phase) would clear the mark early.
--
-- Every writer runs this, so it is written for cost as much as for safety:
-- - `security definer` lets writers that cannot touch the pgfeed schema still be captured. It has
--   no `set search_path` clause (whose save and restore would run on every call): every function,
--   type and operator is schema-qualified instead (`operator(pg_catalog.=)`; no `case x when`,
--   `nullif`, `is distinct from` or other syntax that looks an operator up), so a writer's
--   search_path cannot redirect anything. Transition tables are found before any schema.
-- - Timestamps render in UTC whatever the writer's session uses. A `set timezone` clause would cost
--   every call two time zone changes; this way a session already in UTC (pgfeed's own, and any
--   server whose `timezone` is UTC) changes nothing, and other sessions switch to UTC around
--   the rendering only.
create or replace function pgfeed.capture() returns trigger
    language plpgsql
    security definer
as $$
declare
    rec    pg_catalog.jsonb;
    tz     pg_catalog.text;
    utc    pg_catalog.bool;
    unused pg_catalog.text;
    topics pg_catalog.text[];
    pos    pg_catalog.text;
    rid    pg_catalog.jsonb;
    key    pg_catalog.text;
    op     pg_catalog.text;
    kind   pg_catalog.text;
    was    pg_catalog.jsonb;
    moved  pg_catalog.bool := false;
    left_  pg_catalog.text;
    n      pg_catalog.int8;
    p0     pg_catalog.int4 := 0;
    mark   pg_catalog.text;
    rekey  pg_catalog.text;
    jit    pg_catalog.text;
begin
    if tg_op operator(pg_catalog.=) 'DELETE' then
        op := 'delete';
        kind := '_deleted';
    elsif tg_op operator(pg_catalog.=) 'UPDATE' then
        op := 'update';
        kind := '_updated';
    else
        op := 'insert';
        kind := '_created';
    end if;

    if tg_level operator(pg_catalog.=) 'STATEMENT' then
        if op operator(pg_catalog.=) 'update' then
            -- Rows whose key changed were logged by `pgfeed_capture_rekey` (set by it, cleared here).
            mark := 'pgfeed.rekey_' operator(pg_catalog.||) tg_relid::pg_catalog.text;
            rekey := pg_catalog.current_setting(mark, true);
            if rekey operator(pg_catalog.<>) '' then
                unused := pg_catalog.set_config(mark, '', true);
            else
                rekey := null;
            end if;
        end if;
        tz := pg_catalog.current_setting('TimeZone');
        utc := tz operator(pg_catalog.=) 'UTC' or tz operator(pg_catalog.=) 'Etc/UTC';
        if not utc then
            unused := pg_catalog.set_config('TimeZone', 'UTC', true);
        end if;
        -- One query: how many rows (up to 2) and, for one row, the row rendered (and as it was).
        -- Rendered as `pgfeed_capture`, never as this function's owner: see `pgfeed.serialize`.
        if op operator(pg_catalog.=) 'delete' then
            select pgfeed.serialize(x), (select pg_catalog.count(*) from (select from pgfeed_old limit 2) c)
            into rec, n from pgfeed_old x limit 1;
        elsif op operator(pg_catalog.=) 'insert' then
            select pgfeed.serialize(x), (select pg_catalog.count(*) from (select from pgfeed_new limit 2) c)
            into rec, n from pgfeed_new x limit 1;
        else
            select pgfeed.serialize(x), pgfeed.serialize(y), (select pg_catalog.count(*) from (select from pgfeed_new limit 2) c)
            into rec, was, n from pgfeed_new x, pgfeed_old y limit 1;
        end if;
        -- A statement that changed nothing logs nothing and draws no seq; a 1-row update whose
        -- key changed is logged already.
        if n is null or (n operator(pg_catalog.=) 1 and rekey is not null) then
            if not utc then
                unused := pg_catalog.set_config('TimeZone', tz, true);
            end if;
            return null;
        end if;
        if n operator(pg_catalog.>) 1 then
            pos := pg_catalog.current_setting('pgfeed.pos', true);
            if pos is not null and pos operator(pg_catalog.<>) '' then
                p0 := pos::pg_catalog.int4;
            end if;
            -- A large statement's cost estimate would compile the insert to machine code first
            -- (about 250 ms for 100,000 rows, more than it saves).
            jit := pg_catalog.current_setting('jit');
            if jit operator(pg_catalog.=) 'on' then
                unused := pg_catalog.set_config('jit', 'off', true);
            end if;
            -- Each statement's rows in one insert, rendered once each, numbered in the order the
            -- statement changed them, named and given their topics by `pgfeed.event_keys`.
            if op operator(pg_catalog.=) 'insert' then
                insert into pgfeed.events (txid, pos, type, tbl, op, row_id, topics, data)
                select pg_catalog.pg_current_xact_id(), p0 operator(pg_catalog.+) r.o::pg_catalog.int4,
                       tg_argv[1] operator(pg_catalog.||) kind, tg_argv[0], op, k.rid, k.topics, r.d
                from (select pgfeed.serialize_bulk(x) as d, pg_catalog.row_number() over () as o from pgfeed_new x) r
                cross join lateral pgfeed.event_keys(r.d, tg_argv[0], tg_argv[2], tg_argv[3], tg_argv[4]) k;
            elsif op operator(pg_catalog.=) 'delete' then
                insert into pgfeed.events (txid, pos, type, tbl, op, row_id, topics, data)
                select pg_catalog.pg_current_xact_id(), p0 operator(pg_catalog.+) r.o::pg_catalog.int4,
                       tg_argv[1] operator(pg_catalog.||) kind, tg_argv[0], op, k.rid, k.topics, r.d
                from (select pgfeed.serialize_bulk(x) as d, pg_catalog.row_number() over () as o from pgfeed_old x) r
                cross join lateral pgfeed.event_keys(r.d, tg_argv[0], tg_argv[2], tg_argv[3], tg_argv[4]) k;
            else
                -- Each new row with the row as it was (same key), numbered (`o`) in the order of
                -- the new rows, leaving out those `pgfeed_capture_rekey` logged: every new row left
                -- has its old one (a key no row changed), so `o` runs 1..n.
                insert into pgfeed.events (txid, pos, type, tbl, op, row_id, topics, data, old, moved_from, before)
                select pg_catalog.pg_current_xact_id(), p0 operator(pg_catalog.+) nw.o::pg_catalog.int4,
                       tg_argv[1] operator(pg_catalog.||) kind, tg_argv[0], op, nw.rid,
                       -- A move: the parent topic the row left comes last.
                       nw.topics operator(pg_catalog.||) case when m.moved and m.left_ is not null
                           then array[m.left_] else '{}'::pg_catalog.text[] end,
                       nw.d,
                       case when m.moved then od.was end,
                       case when m.moved then m.left_ end,
                       case when not m.moved then od.was end
                from (
                    select s.d, k.rid, k.topics, pg_catalog.row_number() over () as o
                    from (select pgfeed.serialize_bulk(x) as d from pgfeed_new x) s
                    cross join lateral pgfeed.event_keys(s.d, tg_argv[0], tg_argv[2], tg_argv[3], tg_argv[4]) k
                    where rekey is null or k.rid not in (
                        select e.row_id from pgfeed.events e
                        where e.txid operator(pg_catalog.=) pg_catalog.pg_current_xact_id()
                          and e.pos operator(pg_catalog.>=) rekey::pg_catalog.int4
                          and e.tbl operator(pg_catalog.=) tg_argv[0]
                          and e.op operator(pg_catalog.=) 'update')
                ) nw
                join (
                    select s.was, k.rid
                    from (select pgfeed.serialize_bulk(y) as was from pgfeed_old y) s
                    cross join lateral pgfeed.event_keys(s.was, tg_argv[0], tg_argv[2], '', '') k
                ) od on od.rid operator(pg_catalog.=) nw.rid
                cross join lateral (
                    select tg_argv[3] operator(pg_catalog.<>) ''
                             and (od.was operator(pg_catalog.->) tg_argv[3]) operator(pg_catalog.<>) (nw.d operator(pg_catalog.->) tg_argv[3]) as moved,
                           tg_argv[4] operator(pg_catalog.||) ':' operator(pg_catalog.||) (od.was operator(pg_catalog.->>) tg_argv[3]) as left_
                ) m;
            end if;
            get diagnostics n = row_count;
            if jit operator(pg_catalog.=) 'on' then
                unused := pg_catalog.set_config('jit', jit, true);
            end if;
            if not utc then
                unused := pg_catalog.set_config('TimeZone', tz, true);
            end if;
            if n operator(pg_catalog.>) 0 then
                unused := pg_catalog.set_config('pgfeed.pos', (p0 operator(pg_catalog.+) n::pg_catalog.int4)::pg_catalog.text, true);
                -- After the transaction's stamp: see the same step below.
                if p0 operator(pg_catalog.>) 0 and pg_catalog.current_setting('pgfeed.seq', true) operator(pg_catalog.<>) '' then
                    perform pgfeed.restamp();
                end if;
            end if;
            return null;
        end if;
        -- One row (an update's only new row is its only old row, whatever its key): as a row
        -- trigger would have it.
        if op operator(pg_catalog.=) 'update' then
            moved := tg_argv[3] operator(pg_catalog.<>) ''
                     and (was operator(pg_catalog.->) tg_argv[3]) operator(pg_catalog.<>) (rec operator(pg_catalog.->) tg_argv[3]);
        end if;
    else
        tz := pg_catalog.current_setting('TimeZone');
        utc := tz operator(pg_catalog.=) 'UTC' or tz operator(pg_catalog.=) 'Etc/UTC';
        if not utc then
            unused := pg_catalog.set_config('TimeZone', 'UTC', true);
        end if;
        if op operator(pg_catalog.=) 'delete' then
            rec := pgfeed.serialize(old);
        else
            rec := pgfeed.serialize(new);
        end if;
        if op operator(pg_catalog.=) 'update' then
            -- The row as it was: `before` for live views' filters, or a move's `old`.
            was := pgfeed.serialize(old);
            if tg_argv[5] operator(pg_catalog.=) 'move' then
                -- A row trigger of an earlier version, whose WHEN clause saw the parent change.
                moved := true;
            elsif tg_argv[5] operator(pg_catalog.=) 'rekey' then
                moved := tg_argv[3] operator(pg_catalog.<>) ''
                         and (was operator(pg_catalog.->) tg_argv[3]) operator(pg_catalog.<>) (rec operator(pg_catalog.->) tg_argv[3]);
            end if;
        end if;
    end if;
    if not utc then
        -- Back to the writer's zone, as a local setting: it ends with the transaction as it would have.
        unused := pg_catalog.set_config('TimeZone', tz, true);
    end if;

    if pg_catalog.strpos(tg_argv[2], ',') operator(pg_catalog.=) 0 then
        key := rec operator(pg_catalog.->>) tg_argv[2];
        rid := rec operator(pg_catalog.->) tg_argv[2];
    else
        select pg_catalog.string_agg(rec operator(pg_catalog.->>) c, ','), pg_catalog.jsonb_agg(rec operator(pg_catalog.->) c)
        into key, rid
        from pg_catalog.unnest(pg_catalog.string_to_array(tg_argv[2], ',')) c;
    end if;
    topics := array[tg_argv[0], tg_argv[0] operator(pg_catalog.||) ':' operator(pg_catalog.||) key];
    if tg_argv[3] operator(pg_catalog.<>) '' and rec operator(pg_catalog.->>) tg_argv[3] is not null then
        topics := topics operator(pg_catalog.||) (tg_argv[4] operator(pg_catalog.||) ':' operator(pg_catalog.||) (rec operator(pg_catalog.->>) tg_argv[3]));
    end if;
    -- A move: the parent topic the row left comes last (after the one it entered, if any).
    if moved and was operator(pg_catalog.->>) tg_argv[3] is not null then
        left_ := tg_argv[4] operator(pg_catalog.||) ':' operator(pg_catalog.||) (was operator(pg_catalog.->>) tg_argv[3]);
        topics := topics operator(pg_catalog.||) left_;
    end if;

    -- `pos`, the position within the transaction, is a transaction-local setting: it starts again
    -- at 1 in the next transaction (unset or '' there), and a rolled-back savepoint rolls it back
    -- with its events.
    -- (Assignments, not `perform`: plpgsql evaluates an assignment's expression directly, while
    -- `perform` runs a query through SPI, several µs per row.)
    pos := pg_catalog.current_setting('pgfeed.pos', true);
    if pos is null or pos operator(pg_catalog.=) '' then
        pos := pg_catalog.set_config('pgfeed.pos', '1', true);
    else
        pos := pg_catalog.set_config('pgfeed.pos', (pos::pg_catalog.int4 operator(pg_catalog.+) 1)::pg_catalog.text, true);
    end if;

    insert into pgfeed.events (txid, pos, type, tbl, op, row_id, topics, data, old, moved_from, before)
    values (
        pg_catalog.pg_current_xact_id(),
        pos::pg_catalog.int4,
        tg_argv[1] operator(pg_catalog.||) kind,
        tg_argv[0],
        op,
        rid,
        topics,
        rec,
        case when moved then was end,
        left_,
        case when not moved then was end);

    if tg_argv[5] operator(pg_catalog.=) 'rekey' then
        -- The first key change of this statement: the statement trigger leaves out the new rows
        -- logged from here on (see above).
        mark := 'pgfeed.rekey_' operator(pg_catalog.||) tg_relid::pg_catalog.text;
        if pg_catalog.current_setting(mark, true) is null or pg_catalog.current_setting(mark, true) operator(pg_catalog.=) '' then
            unused := pg_catalog.set_config(mark, pos, true);
        end if;
    end if;

    -- A change after the transaction's stamp (it stamped early: `set constraints all immediate`,
    -- or a deferred trigger of the writer's own changed a tracked table after it): the seq is
    -- drawn again, after this change, so that it still follows every commit this transaction
    -- may have seen or overwritten since its first stamp. The old seq becomes a hole.
    if pos operator(pg_catalog.<>) '1' and pg_catalog.current_setting('pgfeed.seq', true) operator(pg_catalog.<>) '' then
        perform pgfeed.restamp();
    end if;
    return null;
end
$$;

-- The commit stamp. Runs once per transaction (only the first event queues it), just before
-- commit, after every change the transaction made. It draws the next `commit_seq` and records
-- `(seq, txid)` in `pgfeed.commits` in one statement; nothing is held across writers until the
-- commit, so concurrent commits share their WAL flushes (group commit), as they do without pgfeed.
--
-- Why seq order is still commit order (see also `pgfeed.settle`): a transaction that read or
-- overwrote another's changes did so after that one committed, hence after its seq was drawn,
-- and draws its own later. Two transactions that commit at the same moment with nothing in common
-- may become visible in the other order than their seqs; readers never pass a seq whose
-- transaction is still in flight (its uncommitted row holds the seq's primary-key entry), so
-- whatever a reader has delivered up to seq N is final.
--
-- A drawn seq whose row is missing is claimed by a reader (`pgfeed.settle`) when its writer was
-- slow to insert it: the insert then finds the claim, and the loop draws again.
--
-- No `set search_path` clause: every function and type name is schema-qualified instead, and
-- the operators are written `operator(pg_catalog.…)`, so a writer's search_path cannot redirect
-- anything in this security-definer function.
create or replace function pgfeed.stamp() returns trigger
    language plpgsql
    security definer
as $$
begin
    -- A synchronous_commit=off writer would otherwise acknowledge, and be read, before its commit
    -- is durable; every other value flushes locally, and leaving it alone spares a setting change.
    if pg_catalog.current_setting('synchronous_commit') operator(pg_catalog.=) 'off' then
        perform pg_catalog.set_config('synchronous_commit', 'on', true);
    end if;
    perform pgfeed.draw();
    return null;
end
$$;

-- Draws this transaction's seq and writes its commit row; then the wake-up, only if some listener
-- waits for one (idle listeners hold advisory lock 7133003 shared, on their LISTEN session; the
-- try below holds it for the length of one expression). When no listener waits, all of them poll
-- the log (under load, a read every few milliseconds); a listener going idle takes the lock, then
-- waits for every commit in flight (`lock table pgfeed.commits in share mode`), so its read after
-- that sees the commits that sent no NOTIFY.
create or replace function pgfeed.draw() returns void
    language plpgsql
    security definer
as $$
declare
    s pg_catalog.int8;
    idle pg_catalog.bool;
begin
    loop
        insert into pgfeed.commits (seq, txid, committed_at)
        values (pg_catalog.nextval('pgfeed.commit_seq'), pg_catalog.pg_current_xact_id(), pg_catalog.clock_timestamp())
        on conflict do nothing
        returning seq into s;
        exit when s is not null;
    end loop;
    perform pg_catalog.set_config('pgfeed.seq', s::pg_catalog.text, true);
    idle := case when pg_catalog.pg_try_advisory_lock(7133003)
                 then not pg_catalog.pg_advisory_unlock(7133003)
                 else true end;
    if idle then
        perform pg_catalog.pg_notify('pgfeed', s::pg_catalog.text);
    end if;
end
$$;

-- A change after the transaction's stamp: its commit row moves to a new seq.
create or replace function pgfeed.restamp() returns void
    language plpgsql
    security definer
as $$
begin
    delete from pgfeed.commits
    where seq operator(pg_catalog.=) pg_catalog.current_setting('pgfeed.seq')::pg_catalog.int8
      and txid operator(pg_catalog.=) pg_catalog.pg_current_xact_id();
    perform pgfeed.draw();
end
$$;

-- Only the triggers (running as the owner) draw and move commit rows. Firing a trigger needs no
-- EXECUTE right (creating one does), so no pgfeed function is anyone's but the owner's and
-- superusers' to call: see the `revoke` at the end of this file.
revoke execute on function pgfeed.draw(), pgfeed.restamp() from public;

-- For readers: the last seq of the unbroken run of commit rows from `from_seq` on, in the
-- caller's snapshot (`from_seq` itself when the next one is missing). Every seq up to what it
-- returns is final, provided none up to `from_seq` can still commit (`pgfeed.settle` made sure).
-- plpgsql, so its plans are cached per session; it counts whole stretches of 1024 seqs through
-- the primary key, then steps one seq at a time through the last one. It looks at most 65,536
-- seqs past `from_seq` (a read takes at most a page of events anyway; the next read goes on).
-- The log read answers the usual case (every seq up to the newest has its row) itself and calls
-- this only otherwise.
create or replace function pgfeed.contiguous(from_seq bigint) returns bigint
    language plpgsql
    stable
as $$
declare
    upto bigint := from_seq;
    stop bigint := from_seq + 65536;
begin
    while upto < stop
          and (select count(*) from pgfeed.commits where seq > upto and seq <= upto + 1024) = 1024 loop
        upto := upto + 1024;
    end loop;
    while upto < stop and exists (select from pgfeed.commits where seq = upto + 1) loop
        upto := upto + 1;
    end loop;
    return upto;
end
$$;

-- The listener's step when a read found a seq missing below the newest commit: from `after` (up
-- to which every seq is final), the highest seq up to which every seq is final now. A missing seq
-- below the newest commit is either in flight (its writer's uncommitted row holds the primary-key
-- entry: the insert below waits for that writer, up to `wait_ms`, and then finds its row) or will
-- never commit (its transaction aborted, or its writer has not inserted it yet: the insert below
-- claims it with a row of txid 0, and a late writer draws again). Returns at the first seq still
-- in flight after `wait_ms`.
create or replace function pgfeed.settle(after bigint, wait_ms int) returns bigint
    language plpgsql
as $$
declare
    at bigint := after;
    newest bigint;
    prev text := current_setting('lock_timeout');
begin
    loop
        at := pgfeed.contiguous(at);
        newest := (select max(seq) from pgfeed.commits);
        if newest is null or at >= newest then
            return at;
        end if;
        begin
            perform set_config('lock_timeout', wait_ms || 'ms', true);
            insert into pgfeed.commits (seq, txid, committed_at) values (at + 1, '0', clock_timestamp())
            on conflict do nothing;
            perform set_config('lock_timeout', prev, true);
        exception when lock_not_available then
            return at;
        end;
    end loop;
end
$$;

-- Created once: dropping and re-creating it would lock the log against writers at every start.
do $$
begin
    if not exists (select from pg_trigger where tgname = 'stamp' and tgrelid = 'pgfeed.events'::regclass) then
        create constraint trigger stamp
            after insert on pgfeed.events
            deferrable initially deferred
            for each row
            when (new.pos = 1)
            execute function pgfeed.stamp();
    end if;
end
$$;

-- The capture triggers on `tbl`, of this version and of earlier ones.
create or replace function pgfeed.drop_capture_triggers(tbl regclass) returns void
    language plpgsql
    set search_path = pg_catalog, pgfeed
    set client_min_messages = warning
as $$
declare
    t text;
begin
    foreach t in array array['pgfeed_capture', 'pgfeed_capture_move', 'pgfeed_capture_insert',
                             'pgfeed_capture_update', 'pgfeed_capture_delete', 'pgfeed_capture_rekey'] loop
        execute format('drop trigger if exists %I on %s', t, tbl);
    end loop;
end
$$;

-- Attach `tbl` to the feed under `topic`, with events named `<type_prefix>_created` etc. When
-- `parent_col` is given, each change is also published on `<parent_topic>:<parent_col value>`.
create or replace function pgfeed.track_as(
    tbl regclass, topic text, type_prefix text, parent_col text default null, parent_topic text default null
) returns void
    language plpgsql
    set search_path = pg_catalog, pgfeed
    set client_min_messages = warning
as $$
declare
    pk   text[];
    args text;
begin
    select array_agg(a.attname::text order by k.ord) into pk
    from pg_index i
    cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = tbl and i.indisprimary;
    if pk is null then
        raise exception 'pgfeed.track: table % has no primary key', tbl
            using hint = 'Events name their row by its primary key; add one, then track the table.';
    end if;

    -- A dropped table leaves its row here (there is no hook on DROP TABLE short of a superuser's
    -- event trigger); forget such rows, so a table dropped and created again can be tracked again.
    delete from pgfeed.tracked t where not exists (select from pg_class c where c.oid = t.relid);
    insert into pgfeed.tracked (topic, relid, type_prefix, pk, parent_col, parent_topic)
    values (topic, tbl, type_prefix, pk, parent_col, parent_topic)
    on conflict (relid) do update
        set topic = excluded.topic, type_prefix = excluded.type_prefix, pk = excluded.pk,
            parent_col = excluded.parent_col, parent_topic = excluded.parent_topic;

    -- Statement triggers with transition tables (see `pgfeed.capture`), one per event, and the
    -- row trigger for updates that change the primary key. Those of earlier versions (row
    -- triggers `pgfeed_capture`, `pgfeed_capture_update`, `pgfeed_capture_move`) go.
    perform pgfeed.drop_capture_triggers(tbl);
    args := format('%L, %L, %L, %L, %L', topic, type_prefix, array_to_string(pk, ','),
                   coalesce(parent_col, ''), case when parent_col is null then '' else coalesce(parent_topic, '') end);
    execute format(
        'create trigger pgfeed_capture_insert after insert on %s referencing new table as pgfeed_new '
        'for each statement execute function pgfeed.capture(%s)', tbl, args);
    execute format(
        'create trigger pgfeed_capture_update after update on %s referencing old table as pgfeed_old new table as pgfeed_new '
        'for each statement execute function pgfeed.capture(%s)', tbl, args);
    execute format(
        'create trigger pgfeed_capture_delete after delete on %s referencing old table as pgfeed_old '
        'for each statement execute function pgfeed.capture(%s)', tbl, args);
    -- Its WHEN clause is bound here, under this function's search_path.
    execute format(
        'create trigger pgfeed_capture_rekey after update on %s for each row when ((%s) is distinct from (%s)) '
        'execute function pgfeed.capture(%s, %L)',
        tbl,
        (select string_agg(format('old.%I', c), ', ') from unnest(pk) c),
        (select string_agg(format('new.%I', c), ', ') from unnest(pk) c),
        args, 'rekey');
end
$$;

-- Tables tracked by an earlier version have row triggers (and those tracked with a parent before
-- moves were logged, no move trigger): tracked again once, they get the statement triggers.
do $$
declare
    t record;
begin
    for t in
        select tr.* from pgfeed.tracked tr
        where exists (select from pg_class c where c.oid = tr.relid)
          and not exists (select from pg_trigger g where g.tgrelid = tr.relid and g.tgname = 'pgfeed_capture_rekey')
    loop
        perform pgfeed.track_as(t.relid, t.topic, t.type_prefix, t.parent_col, t.parent_topic);
    end loop;
end
$$;

-- Any table with a primary key joins the feed (README "Writing: any writer, any table"). Its topic
-- is the table name, schema-qualified when not in `public`; its events are
-- `<table>_created|updated|deleted`.
create or replace function pgfeed.track(tbl regclass) returns void
    language plpgsql
    set search_path = pg_catalog, pgfeed
as $$
declare
    nsp  text;
    name text;
begin
    select n.nspname, c.relname into nsp, name
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = tbl;
    perform pgfeed.track_as(tbl, case when nsp = 'public' then name else nsp || '.' || name end, name);
end
$$;

create or replace function pgfeed.untrack(tbl regclass) returns void
    language plpgsql
    set search_path = pg_catalog, pgfeed
    set client_min_messages = warning
as $$
begin
    perform pgfeed.drop_capture_triggers(tbl);
    delete from pgfeed.tracked where relid = tbl;
end
$$;

-- Retention: deletes up to `batch` of the oldest commits older than `keep`, with their events,
-- and returns how many commits went. Small batches keep locks short; call it until it returns 0.
create or replace function pgfeed.prune(keep interval, batch int default 1000) returns int
    language plpgsql
    set search_path = pg_catalog, pgfeed
as $$
declare
    n   int;
    top bigint;
begin
    -- The oldest `batch` commits, and of those the run that is older than `keep`: seq order is
    -- commit order, so this reads only the start of the primary key, however long the log.
    with oldest as (
        select seq, txid, committed_at from pgfeed.commits order by seq limit batch
    ), old as (
        select seq, txid from oldest
        where seq < coalesce((select min(seq) from oldest where committed_at >= clock_timestamp() - keep),
                             9223372036854775807)
    ), ev as (
        delete from pgfeed.events e using old where e.txid = old.txid
    ), gone as (
        delete from pgfeed.commits c using old where c.seq = old.seq returning c.seq
    )
    select count(*), max(seq) into n, top from gone;
    -- Readers compare a cursor with `pruned_upto` in the same snapshot as their read.
    if n > 0 then
        update pgfeed.meta set pruned_upto = greatest(pruned_upto, top);
    end if;
    return n;
end
$$;

-- No pgfeed function is PUBLIC's to call (README "Security: auth and limits"): the owner (pgfeed's
-- own role) and superusers track tables, prune and read; triggers fire without EXECUTE rights.
revoke execute on all functions in schema pgfeed from public;

-- ---------------------------------------------------------------------------------------------
-- Many servers and failover (README "Running many servers and failing over"). Appended as its own
-- block: nothing above depends on it.
--
-- One leader per database: the pgfeed listener holding session advisory lock 7133004 on its
-- LISTEN session. It alone settles and joins the idle set; after each batch it reads, and before
-- any node delivers that batch, it writes the watermark below on that same session (a leader that
-- lost its session cannot write it) and notifies `pgfeed_watermark`. Every node delivers only up
-- to the watermark.
--
-- `pending` is written first, when every commit up to it is committed here; `seq` is what nodes
-- may deliver: equal to `pending` at once with `--durable-watermark local`, and only once the
-- named standby has flushed the WAL holding `pending` with `--durable-watermark standby`. The row
-- is written after the commits it covers, so a standby holding it holds them: after a failover,
-- greatest(seq, pending) of the row the new primary holds is a seq certainly in its log.
create table if not exists pgfeed.watermark (
    singleton  boolean primary key default true check (singleton),
    seq        bigint not null default 0,
    pending    bigint not null default 0,
    gen        int not null default 1,
    timeline   int,
    lsn        pg_lsn,
    written_at timestamptz
);
insert into pgfeed.watermark default values on conflict do nothing;

-- Generations: a new one starts when the leader finds the database on another timeline (a standby
-- promoted) or another system (a different cluster under the same log). `last_good_seq` is the
-- newest seq the new generation's log certainly shares with the one before (the watermark row it
-- inherited). A cursor of generation g resumes exactly when its seq is at most the smallest
-- `last_good_seq` of every generation after g; else the client is told `log_diverged`.
create table if not exists pgfeed.generations (
    gen           int primary key,
    started_at    timestamptz not null default clock_timestamp(),
    timeline      int not null,
    system_id     bigint not null,
    last_good_seq bigint
);
