-- The latest moment a case has been answered "as of" (a plan read with ?as_of=, an auditor's
-- window closed in the past). An event is stamped before its append commits, so an append
-- still in flight could land with a time a reader was already answered as of, and the same
-- question would then get another plan. An append stamped at or before this moment is
-- refused and stamped again after it (decision 0002). Null: never answered as of a moment.
ALTER TABLE records.streams ADD COLUMN answered_until timestamptz;
