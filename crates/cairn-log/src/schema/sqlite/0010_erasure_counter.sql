-- Erasures are counted in the head row, and each erasure carries its number. A process
-- that caches people's data keys records up to which number it has learnt of
-- erasures; a transaction that seals reads the count with the head lock it holds
-- anyway, and trusts a cached key only when no erasure it has not learnt of exists.
-- Erasures committed before this migration carry no number: every process starts
-- from the count as it finds it, and reads keys from the database after that.

ALTER TABLE log_head ADD COLUMN erasures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subject_keys ADD COLUMN erasure_seq INTEGER;

UPDATE log_head SET erasures = (SELECT count(*) FROM subject_keys WHERE state = 'erased');

CREATE UNIQUE INDEX subject_keys_erasure_seq ON subject_keys (erasure_seq)
    WHERE erasure_seq IS NOT NULL;

-- Processes no longer look erasures up by time.
DROP INDEX subject_keys_erased;
