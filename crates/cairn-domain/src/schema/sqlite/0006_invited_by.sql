-- Who invited a person (`user.invited` version 2). Users invited before it was recorded
-- keep NULL, which is also what replay rebuilds from their upcast events.
ALTER TABLE users ADD COLUMN invited_by TEXT;
