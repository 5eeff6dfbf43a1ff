-- Appends no longer NOTIFY inside their own transaction: PostgreSQL takes a global lock at the
-- commit of any transaction that notified, which serialised every append on the server. The
-- service announces committed appends itself (services/records/store/feed.py, FeedWaiter).
DROP TRIGGER events_notify ON records.events;
DROP FUNCTION records.notify_appended();
