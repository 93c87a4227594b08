-- SQLite has no row-level security: there the policy module's filters are the wall.
SELECT 1;
