-- An organization's people, in id order, without walking every organization's.
CREATE INDEX users_by_org ON users (org_id, id);
