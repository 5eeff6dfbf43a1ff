-- The caseload's overdue steps counted open steps of goals paused, set aside or reached, and
-- of closed cases, though no one works on those. The projection now keeps the due dates of
-- open steps of active goals of open cases only; this recomputes the rows already written from
-- their own plan document (only those that change), so no rebuild is needed after upgrading.
WITH recomputed AS (
    SELECT case_id, CASE
        WHEN status = 'closed' THEN '{}'::date[]
        ELSE ARRAY(
            SELECT (step->>'due_date')::date
            FROM jsonb_array_elements(view->'goals') AS goal,
                 jsonb_array_elements(goal->'steps') AS step
            WHERE goal->>'status' = 'active'
              AND step->>'status' IN ('not_started', 'in_progress')
              AND step->>'due_date' IS NOT NULL
            ORDER BY 1)
        END AS dates
    FROM records.plans)
UPDATE records.plans p SET open_step_due_dates = r.dates
FROM recomputed r
WHERE p.case_id = r.case_id AND p.open_step_due_dates IS DISTINCT FROM r.dates;
