-- Outcome facts are dated in the agency's own days (the time zone of the policy the case was
-- opened under), as due dates and review dates already are: an Auckland review closed on
-- the morning after it fell due was counted as closed before it, in UTC. Goal facts name
-- their goal, so a take-back cancels the achievement it takes back (its domain and its days)
-- rather than whatever domain the goal has since. Only rows that change are written.
ALTER TABLE records.outcome_facts ADD COLUMN goal_id uuid;

UPDATE records.outcome_facts f SET goal_id = (e.data->>'goal_id')::uuid
FROM records.events e
WHERE e.event_id = f.event_id AND f.kind IN ('goal_achieved', 'goal_unachieved');

-- Days are re-counted in the case's zone: the fact's date, and an achievement's days since
-- its goal was set. A zone PostgreSQL does not know keeps UTC days rather than stop the upgrade.
WITH zoned AS (
    SELECT f.event_id,
           (e.recorded_at AT TIME ZONE opened.zone)::date AS local_on,
           (e.recorded_at AT TIME ZONE opened.zone)::date
             - (goal_set.recorded_at AT TIME ZONE opened.zone)::date AS local_days
    FROM records.outcome_facts f
    JOIN records.events e ON e.event_id = f.event_id
    CROSS JOIN LATERAL (SELECT o.data->'policy'->>'timezone' AS zone FROM records.events o
                        WHERE o.stream_id = e.stream_id AND o.version = 1) opened
    LEFT JOIN LATERAL (SELECT g.recorded_at FROM records.events g
                       WHERE g.stream_id = e.stream_id AND g.type = 'GoalSet'
                         AND g.data->>'goal_id' = f.goal_id::text
                       ORDER BY g.version LIMIT 1) goal_set ON f.kind = 'goal_achieved'
    WHERE opened.zone IS NOT NULL AND opened.zone <> 'UTC'
      AND opened.zone IN (SELECT name FROM pg_timezone_names))
UPDATE records.outcome_facts f
SET occurred_on = z.local_on, days = coalesce(z.local_days, f.days)
FROM zoned z
WHERE f.event_id = z.event_id
  AND (f.occurred_on, f.days) IS DISTINCT FROM (z.local_on, coalesce(z.local_days, f.days));
