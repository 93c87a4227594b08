-- Personal data is sealed under a data key per person (subject). The data keys are
-- kept wrapped by a key-encryption key that lives outside the database; erasing a
-- person destroys their data key, so what was sealed under it can never be read again.
-- Neither table is part of the hash chain: they change, and the chain covers only the
-- sealed form of the events.

-- The key-encryption keys this database's data keys were wrapped by: the current one,
-- and those a rotation retired.
CREATE TABLE pii_keys (
    kek_id      TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('current', 'retired')),
    created_at  TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX pii_keys_one_current ON pii_keys (state) WHERE state = 'current';

CREATE TABLE subject_keys (
    subject_id  TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('active', 'erased')),
    kek_id      TEXT,
    wrapped     TEXT,
    created_at  TEXT NOT NULL,
    erased_at   TEXT,
    -- The erasure's receipt (JSON), returned again if the person is erased again.
    erasure     TEXT,
    -- When the copies cairn made outside the database (outbox files) were removed.
    swept_at    TEXT,
    CHECK ((state = 'active') = (wrapped IS NOT NULL AND kek_id IS NOT NULL))
) STRICT;

-- The people erased lately: how each process learns of erasures others commit.
CREATE INDEX subject_keys_erased ON subject_keys (erased_at) WHERE state = 'erased';
