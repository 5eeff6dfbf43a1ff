-- The caseload's overdue steps counted open steps of goals paused, set aside or reached, and
-- of closed cases, though no one works on those. The projection now keeps the due dates of
-- open steps of active goals of open cases only; this recomputes the rows already written from
-- their own plan document, so no rebuild is needed after upgrading.
UPDATE records.plans SET open_step_due_dates = CASE
    WHEN status = 'closed' THEN '{}'::date[]
    ELSE ARRAY(
        SELECT (step->>'due_date')::date
        FROM jsonb_array_elements(view->'goals') AS goal,
             jsonb_array_elements(goal->'steps') AS step
        WHERE goal->>'status' = 'active'
          AND step->>'status' IN ('not_started', 'in_progress')
          AND step->>'due_date' IS NOT NULL
        ORDER BY 1)
    END;
