-- The access log is exported page by page. Entries commit out of id order (each audited read
-- writes its own), so paging by "id > last" skipped an entry whose id was taken before, but
-- committed after, the last one handed out (an audit lost 4-6 of 1,200 entries that way).
-- Pages now follow commit order as the feed does: (transaction_id, id), up to the snapshot's
-- xmin. Rows written before this migration share its transaction id, in id order.
ALTER TABLE records.access_log
    ADD COLUMN transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX access_log_commit_order ON records.access_log (agency, transaction_id, id);
