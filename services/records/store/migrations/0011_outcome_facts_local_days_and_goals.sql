-- Outcome facts are dated in the agency's own days (the time zone of the policy the case was
-- opened under), as due dates and review dates already are: an Auckland review closed on
-- the morning after it fell due was counted as closed before it, in UTC. Goal facts name
-- their goal, so a take-back cancels the achievement it takes back (its domain and its days)
-- rather than whatever domain the goal has since.
ALTER TABLE records.outcome_facts ADD COLUMN goal_id uuid;

UPDATE records.outcome_facts f SET goal_id = (e.data->>'goal_id')::uuid
FROM records.events e
WHERE e.event_id = f.event_id AND f.kind IN ('goal_achieved', 'goal_unachieved');

-- a zone PostgreSQL does not know keeps UTC days rather than stop the upgrade
UPDATE records.outcome_facts f
SET occurred_on = (e.recorded_at AT TIME ZONE opened.zone)::date
FROM records.events e,
     LATERAL (SELECT o.data->'policy'->>'timezone' AS zone FROM records.events o
              WHERE o.stream_id = e.stream_id AND o.version = 1) opened
WHERE e.event_id = f.event_id
  AND opened.zone IS NOT NULL AND opened.zone <> 'UTC'
  AND opened.zone IN (SELECT name FROM pg_timezone_names);
