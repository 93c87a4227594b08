-- A person may be restricted now and erased when a retention period ends: their data
-- stays sealed under their live key and is shown to no one, and nothing new about
-- them is recorded. A restriction takes the next number of the erasures' count, so
-- that processes caching keys learn of it as they learn of an erasure.

ALTER TABLE subject_keys ADD COLUMN restricted_at TIMESTAMPTZ;
-- The restriction's receipt, returned again if the person is restricted again.
ALTER TABLE subject_keys ADD COLUMN restriction JSONB;
