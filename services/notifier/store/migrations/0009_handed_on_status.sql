-- A group's notice (recipient_role 'supervisors') handed on as one notice per member is
-- mailed to no one itself. It was stored 'sent' (with no sent_at) and shown 'handed_on' by
-- every reader; it is now stored as what it is, so no reader has to work it out.
ALTER TABLE notifier.notifications DROP CONSTRAINT notifications_status_check;
UPDATE notifier.notifications SET status = 'handed_on'
    WHERE status = 'sent' AND recipient_role = 'supervisors';
ALTER TABLE notifier.notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('scheduled', 'sent', 'failed', 'dead', 'cancelled', 'handed_on'));
