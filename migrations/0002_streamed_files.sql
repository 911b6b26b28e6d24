-- Uploads and downloads stream (README "Security: auth and limits"): pgfeed never holds a whole
-- file in memory, only one chunk of it.
--
-- An upload writes each chunk as it arrives into `file_upload_chunks` under a random upload id,
-- then, in the transaction that inserts the `files` row, joins them into `file_contents` inside
-- the database. Unlogged: a staged chunk is worth nothing after a crash (the upload failed), so it
-- need not be written twice or replicated. A staged chunk left behind by a server that died
-- mid-upload is deleted by a later upload once it is a day old (`created_at`).
create unlogged table file_upload_chunks (
    upload     uuid not null,
    seq        int not null,
    data       bytea not null,
    created_at timestamptz not null default now(),
    primary key (upload, seq)
);
create index file_upload_chunks_created_at on file_upload_chunks (created_at);
alter table file_upload_chunks alter column data set storage external;

-- A download reads `substring(content from … for …)` one chunk per statement. Stored
-- uncompressed (EXTERNAL), such a slice reads only the TOAST pages it covers; compressed, each
-- slice would decompress the file from its start. Applies to contents written from now on.
alter table file_contents alter column content set storage external;
