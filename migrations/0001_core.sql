-- Core tables: API keys, Services, PhoneNumbers. Redis holds the hot copy of Services and numbers;
-- these rows are the source of truth that outlives Redis.

CREATE TABLE api_keys (
    sid            text PRIMARY KEY,                 -- SK + 32 hex
    friendly_name  text NOT NULL,
    secret_hash    text NOT NULL,                    -- scrypt$salt$hash; the secret itself is never stored
    permissions    text[] NOT NULL DEFAULT '{proxy}',
    service_sids   text[],                           -- NULL: every Service
    date_created   timestamptz NOT NULL DEFAULT now(),
    date_revoked   timestamptz
);

CREATE TABLE services (
    sid                          text PRIMARY KEY,   -- KS + 32 hex
    account_sid                  text NOT NULL,
    unique_name                  text NOT NULL UNIQUE,
    default_ttl_s                integer NOT NULL DEFAULT 0,
    geo_match_level              text NOT NULL DEFAULT 'country',
    number_selection_behavior    text NOT NULL DEFAULT 'prefer-sticky',
    callback_url                 text,
    intercept_callback_url       text,
    out_of_session_callback_url  text,
    chat_instance_sid            text,
    cool_off_s                   integer NOT NULL DEFAULT 14400,
    allowed_countries            text[],             -- NULL: every country
    options                      jsonb NOT NULL DEFAULT '{}',  -- relay options (call limit, whisper, recording, body policy ...)
    date_created                 timestamptz NOT NULL DEFAULT now(),
    date_updated                 timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE phone_numbers (
    sid            text PRIMARY KEY,                 -- PN + 32 hex
    service_sid    text NOT NULL REFERENCES services (sid) ON DELETE CASCADE,
    phone_number   text NOT NULL UNIQUE,             -- E.164; a number serves one Service
    friendly_name  text,
    iso_country    text NOT NULL,
    capabilities   jsonb NOT NULL DEFAULT '{}',
    is_reserved    boolean NOT NULL DEFAULT false,
    date_created   timestamptz NOT NULL DEFAULT now(),
    date_updated   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX phone_numbers_service ON phone_numbers (service_sid, date_created, sid);
