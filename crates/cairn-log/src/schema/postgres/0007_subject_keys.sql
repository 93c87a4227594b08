-- Personal data is sealed under a data key per person (subject). The data keys are
-- kept wrapped by a key-encryption key that lives outside the database; erasing a
-- person destroys their data key, so what was sealed under it can never be read again.
-- Neither table is part of the hash chain: they change, and the chain covers only the
-- sealed form of the events. The tenant reader role is granted neither.

-- The key-encryption keys this database's data keys were wrapped by: the current one,
-- and those a rotation retired.
CREATE TABLE pii_keys (
    kek_id      TEXT        PRIMARY KEY,
    state       TEXT        NOT NULL CHECK (state IN ('current', 'retired')),
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX pii_keys_one_current ON pii_keys (state) WHERE state = 'current';

CREATE TABLE subject_keys (
    subject_id  UUID        PRIMARY KEY,
    state       TEXT        NOT NULL CHECK (state IN ('active', 'erased')),
    kek_id      TEXT,
    wrapped     TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    erased_at   TIMESTAMPTZ,
    -- The erasure's receipt, returned again if the person is erased again.
    erasure     JSONB,
    -- When the copies cairn made outside the database (outbox files) were removed.
    swept_at    TIMESTAMPTZ,
    CHECK ((state = 'active') = (wrapped IS NOT NULL AND kek_id IS NOT NULL))
);

-- The people erased lately: how each process learns of erasures others commit.
CREATE INDEX subject_keys_erased ON subject_keys (erased_at) WHERE state = 'erased';
