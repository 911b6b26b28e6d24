-- One round of scripts/capture-log-shapes.sql (each statement rolled back).
begin;
insert into shape_rows_jsonb
select pg_current_xact_id(), r.o::int, 'study_created', 'studies', 'insert', r.d -> 'id',
       array['studies', 'studies:' || (r.d ->> 'id')], r.d
from (select to_jsonb(x) d, row_number() over () o from shape_src x) r;
rollback;
begin;
insert into shape_rows_json
select pg_current_xact_id(), r.o::int, 'study_created', 'studies', 'insert', to_jsonb(r.id),
       array['studies', 'studies:' || r.id::text], r.d
from (select row_to_json(x) d, x.id, row_number() over () o from shape_src x) r;
rollback;
begin;
insert into shape_packed_jsonb
select pg_current_xact_id(), min(o)::int, count(*), 'study_created', 'studies', 'insert', jsonb_agg(d order by o)
from (select to_jsonb(x) d, row_number() over () o from shape_src x) r
group by (o - 1) / 1000;
rollback;
begin;
insert into shape_packed_json
select pg_current_xact_id(), min(o)::int, count(*), 'study_created', 'studies', 'insert', json_agg(d order by o)
from (select row_to_json(x) d, row_number() over () o from shape_src x) r
group by (o - 1) / 1000;
rollback;
