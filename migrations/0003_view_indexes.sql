-- Live views (README "Live views"): every sort and filter of the admin page is an index scan on a
-- million studies. Views sort text by code point (`collate "C"`, the same order in Rust and in
-- PostgreSQL whatever the database's locale), so the text indexes are in that collation; each
-- ends with the key, which views append as the final tie-break. A descending sort reads an index
-- backwards; its key ties are then put in order by an incremental sort of each group.
create index if not exists studies_label_c on studies (label collate "C", id);
create index if not exists studies_title_c on studies (title collate "C", id);
create index if not exists studies_status on studies (status, id);
create index if not exists studies_updated_at on studies (updated_at, id);
create index if not exists studies_created_at on studies (created_at, id);
-- A status filter with the admin page's default order (newest change first), and its count.
create index if not exists studies_status_updated_at on studies (status, updated_at, id);
