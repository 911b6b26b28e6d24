-- The admin page's two sorts that no index served (README "Live views"), found with `explain`
-- on a million studies: a status sort was a sequential scan and a sort of every row (an index in
-- the database's collation cannot give the code-point order views sort text by), and so was a
-- version sort. The page sorts status by title within each status, so one index in code-point
-- order serves that sort, a status filter under a title sort, and status counts; it replaces the
-- index on (status, id), so writers of studies pay one index more, for version.
drop index if exists studies_status;
create index if not exists studies_status_title_c on studies (status collate "C", title collate "C", id);
create index if not exists studies_version on studies (version, id);
