-- When a notice the case had cancelled was called for again (a case reopened, a review moved
-- back to its first date): the recorded_at of that event. Its staleness, and whether a
-- heads-up's moment had passed, count from it; whether an earlier notifier may have sent it
-- (a rebuilt schema's guard) still counts from cause_recorded_at.
ALTER TABLE notifier.notifications ADD COLUMN recalled_at timestamptz;
