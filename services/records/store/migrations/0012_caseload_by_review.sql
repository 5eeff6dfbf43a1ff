-- The caseload by urgency (GET /v1/cases?order=next_review): soonest review first, no review
-- last, then case id. A page is one range of these indexes read in order, for a case
-- manager's caseload and for a supervisor's whole agency, however many cases the agency has.
-- The expression must stay exactly the one projections/plans.py sorts by.
CREATE INDEX plans_caseload_by_review
    ON records.plans (agency, case_manager, (coalesce(next_review_due, 'infinity'::date)), case_id);
CREATE INDEX plans_agency_by_review
    ON records.plans (agency, (coalesce(next_review_due, 'infinity'::date)), case_id);
-- The agency index above serves review_due_before too (the listing compares the same
-- expression), so this one would only cost every plan write an index entry.
DROP INDEX records.plans_review_due;
