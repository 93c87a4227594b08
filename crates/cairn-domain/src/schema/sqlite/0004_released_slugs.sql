-- An organization whose bootstrap failed lets go of its slug, so that it can be
-- bootstrapped again: only organizations that have not failed hold theirs. (The
-- bootstrap command waits, besides, until the failed one is deactivated.)
DROP INDEX organizations_by_slug;
CREATE UNIQUE INDEX organizations_by_held_slug ON organizations (slug) WHERE status <> 'failed';
CREATE INDEX organizations_by_slug ON organizations (slug);
