-- Reviews held on time are counted against the reviews that fell due, not only those held: a
-- review never held used to count for nothing. Each scheduling of a review (a plan agreed, a
-- review held, a reschedule) records a review_due fact with the review and its due date; a
-- review_held fact now names its review too. After upgrading a database that already holds
-- events, run `casetrail rebuild-projections` once to derive them for the events before.
ALTER TABLE records.outcome_facts ADD COLUMN review_id uuid, ADD COLUMN due_on date;
CREATE INDEX outcome_facts_reviews ON records.outcome_facts (agency, review_id)
    WHERE review_id IS NOT NULL;
