-- The audit log (docs/audit.md): append-only, hash-chained, partitioned by month of the event time.
--
-- Chains: one per (Service, month). `seq` counts from 1 inside the chain and each row's `hash`
-- covers the previous row's hash, so altering, removing, inserting or reordering a row breaks
-- the chain. A chain lives in exactly one partition, so retention (dropping a month) removes whole
-- chains and never leaves a verified chain with a hole.
--
-- Personal data: real numbers never appear in a chained row. Each number is a subject with a
-- random token (SJ + 32 hex) and a random key (audit_subjects); rows hold the token, and personal
-- text (bodies, friendly names) is encrypted under the keys of the event's subjects. Erasure
-- deletes the subject row: the chained rows stay byte for byte as they were (verify stays green)
-- while the number and the text become unreadable.

CREATE TABLE audit_events (
    ts           timestamptz NOT NULL,            -- event time (ts_ms of the stream entry)
    id           text        NOT NULL,            -- EV + 32 hex, unique: the writer is idempotent on it
    service_sid  text,                            -- NULL: events of no Service (keys, audit.erased ...)
    seq          bigint      NOT NULL,            -- position in the chain (service_sid, month of ts), from 1
    type         text        NOT NULL,
    session_sid  text,
    numbers      text[]      NOT NULL DEFAULT '{}',  -- subject tokens of every number the event concerns
    data         text        NOT NULL,            -- canonical JSON, byte for byte what the hash covers
    prev_hash    bytea       NOT NULL,
    hash         bytea       NOT NULL,
    -- The id alone cannot be unique on a partitioned table (the partition key must be part of it);
    -- an event's ts never changes (it travels with the id), so (ts, id) is unique per event and the
    -- writer checks ids under the chain lock before it assigns seq numbers.
    PRIMARY KEY (ts, id)
) PARTITION BY RANGE (ts);

-- Query by number or proxy number: GIN over the tokens (about 1 ms over a million rows).
CREATE INDEX audit_events_numbers ON audit_events USING gin (numbers);
CREATE INDEX audit_events_service ON audit_events (service_sid, ts, id);
CREATE INDEX audit_events_session ON audit_events (session_sid, ts, id) WHERE session_sid IS NOT NULL;

-- Guard: a row for a month that has no partition fails loudly (check_violation) instead of
-- landing here, where it would block creating that month's partition later. CHECK (false) also
-- lets Postgres attach new partitions without scanning this one.
CREATE TABLE audit_events_default PARTITION OF audit_events (
    CONSTRAINT audit_events_default_empty CHECK (false)
) DEFAULT;

CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Retention drops whole partitions (DDL, no row trigger); erasure deletes audit_subjects rows.
    -- Nothing else may change a stored event.
    RAISE EXCEPTION 'audit_events is append-only: % rejected', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- Creates (once) the partition holding p_ts: audit_events_pYYYYMM, [month start, next month) UTC,
-- with a unique (chain, seq) index so two writers can never both write the same chain position.
-- CREATE TABLE + ATTACH takes a lighter lock on the parent than CREATE TABLE ... PARTITION OF, so
-- a long export does not stall the writer at a month boundary.
CREATE FUNCTION audit_ensure_partition(p_ts timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamp := date_trunc('month', p_ts AT TIME ZONE 'UTC');
    lo          timestamptz := month_start AT TIME ZONE 'UTC';
    hi          timestamptz := (month_start + interval '1 month') AT TIME ZONE 'UTC';
    part        text := 'audit_events_p' || to_char(month_start, 'YYYYMM');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('maskline audit partitions'));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE audit_events INCLUDING DEFAULTS)', part);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I ((coalesce(service_sid, '''')), seq)', part || '_chain', part);
    EXECUTE format('ALTER TABLE audit_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    RETURN part;
END
$$;

-- The head (last seq and hash) of every chain. Writers lock a chain's row (SELECT ... FOR UPDATE)
-- while they extend it, which serialises concurrent writers per chain; verify checks that the
-- rows end where the head says (a removed tail or an appended row shows).
CREATE TABLE audit_chain_heads (
    chain   text   NOT NULL,                      -- service_sid, '' for events of no Service
    period  date   NOT NULL,                      -- first day of the month (UTC): one partition
    seq     bigint NOT NULL,
    hash    bytea  NOT NULL,
    PRIMARY KEY (chain, period)
);

-- Subjects: one per real number (or channel identifier). Erasure deletes the row.
CREATE TABLE audit_subjects (
    subject_id  text        PRIMARY KEY,          -- SJ + 32 hex: stands for the number in audit_events
    number      text        NOT NULL UNIQUE,      -- E.164 (or the identifier as the event gave it)
    key         bytea       NOT NULL,             -- 32 random bytes; personal text is encrypted under it
    created_at  timestamptz NOT NULL DEFAULT now()
);
