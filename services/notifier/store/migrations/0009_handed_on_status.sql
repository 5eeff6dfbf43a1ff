-- A group's notice (recipient_role 'supervisors') handed on as one notice per member is
-- mailed to no one itself. It was stored 'sent' and shown 'handed_on' by every reader (and,
-- before the twenty-first session, with the moment it was handed on as its sent_at); it is
-- now stored as what it is, so no reader has to work it out.
ALTER TABLE notifier.notifications DROP CONSTRAINT notifications_status_check;
UPDATE notifier.notifications SET status = 'handed_on', sent_at = NULL
    WHERE status = 'sent' AND recipient_role = 'supervisors';
ALTER TABLE notifier.notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('scheduled', 'sent', 'failed', 'dead', 'cancelled', 'handed_on'));
