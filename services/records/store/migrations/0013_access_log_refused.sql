-- Refused attempts in the access log: why an audited read was refused (null: it was not).
-- An auditor asking for a case of their agency that their token does not name was answered
-- 404 and left no entry, so a supervisor reviewing the log never saw a court probing other
-- cases. Entries written before this column have it null, including an auditor's read refused
-- for falling outside the window (logged then, but not marked).
ALTER TABLE records.access_log ADD COLUMN refused text;
