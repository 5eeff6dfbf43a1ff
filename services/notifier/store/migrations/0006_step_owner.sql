-- Who took a step on (participant, case_manager or support, and the support's name): a nudge
-- for a step the case manager or a support took on no longer asks the case manager to check
-- in with the participant about what support would help. Rows from before this column
-- existed keep NULL until the step changes or the feed is replayed: worded as before.
ALTER TABLE notifier.steps ADD COLUMN owner text, ADD COLUMN support_name text;
