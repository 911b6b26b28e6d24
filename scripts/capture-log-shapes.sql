-- Issue 19's next step, measured before it is built: what writing a bulk statement's events costs
-- in other shapes of log row. 100,000 studies-like rows, each shape 3 rounds, each in a rolled-back
-- transaction (the log tables are scratch copies, not pgfeed's):
--   per-row jsonb   today's shape: one row per event, `to_jsonb`, key and topics from the document;
--   per-row json    one row per event, `row_to_json` into a json column, key and topics from the row;
--   packed jsonb    one row per 1,000 events, `jsonb_agg` of `to_jsonb`;
--   packed json     one row per 1,000 events, `json_agg` of `row_to_json`.
-- Run against a scratch database: `psql -X -q -d scratch -f scripts/capture-log-shapes.sql`.
\timing off
set client_min_messages = warning;
drop table if exists shape_src, shape_rows_jsonb, shape_rows_json, shape_packed_jsonb, shape_packed_json;
create table shape_src as
select i as id, 'L' || lpad(i::text, 7, '0') as label, 'alpha ' || i as title, '' as description,
       (array['draft','active','closed','archived'])[1 + i % 4] as status, 1 as version,
       now() as created_at, now() as updated_at
from generate_series(1, 100000) i;
analyze shape_src;
create table shape_rows_jsonb (txid xid8 not null, pos int not null, type text not null, tbl text not null, op text not null,
                               row_id jsonb not null, topics text[] not null, data jsonb not null);
create index on shape_rows_jsonb (txid, pos);
create table shape_rows_json (txid xid8 not null, pos int not null, type text not null, tbl text not null, op text not null,
                              row_id jsonb not null, topics text[] not null, data json not null);
create index on shape_rows_json (txid, pos);
create table shape_packed_jsonb (txid xid8 not null, pos int not null, n int not null, type text not null, tbl text not null,
                                 op text not null, data jsonb not null);
create index on shape_packed_jsonb (txid, pos);
create table shape_packed_json (txid xid8 not null, pos int not null, n int not null, type text not null, tbl text not null,
                                op text not null, data json not null);
create index on shape_packed_json (txid, pos);
\timing on
\echo round 1: per-row jsonb, per-row json, packed jsonb, packed json
\ir capture-log-shapes-round.sql
\echo round 2
\ir capture-log-shapes-round.sql
\echo round 3
\ir capture-log-shapes-round.sql
\timing off
drop table shape_src, shape_rows_jsonb, shape_rows_json, shape_packed_jsonb, shape_packed_json;
