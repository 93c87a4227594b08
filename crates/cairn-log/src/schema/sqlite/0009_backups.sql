-- What a database knows of the backups it came from. `cairn backup` writes one row into
-- the copy it takes (when it was taken, the head it holds); `cairn restore` marks that
-- row restored, or adds one when the backup carried none. `audit verify` reads them: a
-- checkpoint signed after a backup was taken and before it was restored, past the head
-- it restored, describes events the restored log never held.

CREATE TABLE log_backups (
    id              INTEGER PRIMARY KEY,
    taken_at        TEXT,
    head_position   INTEGER NOT NULL CHECK (head_position >= 0),
    head_hash       TEXT    NOT NULL,
    restored_at     TEXT,
    restored_from   TEXT
) STRICT;
