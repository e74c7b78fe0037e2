-- A Service's block list (Maskline extension: /v1/Services/{KS}/Blocked, `maskline block`): a
-- blocked identifier can neither join a session nor reach anyone through a proxy number. Redis
-- keeps a copy as the set ml:{KS}:blocked (published with the Service, rebuilt by recovery).
-- Personal data: an erasure of the number deletes its rows (maskline/erasure.py).
CREATE TABLE blocked_identifiers (
    sid            text PRIMARY KEY,                 -- BL + 32 hex
    service_sid    text NOT NULL REFERENCES services (sid) ON DELETE CASCADE,
    identifier     text NOT NULL,                    -- E.164 (or channel:+E.164)
    date_created   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (service_sid, identifier)
);
CREATE INDEX blocked_identifiers_service ON blocked_identifiers (service_sid, date_created, sid);
CREATE INDEX blocked_identifiers_identifier ON blocked_identifiers (identifier);
