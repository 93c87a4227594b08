-- An operator finds a person or an invitation by the address they have. Addresses are
-- stored lower-cased; an erased or restricted person's is empty.
CREATE INDEX users_by_email ON users (email);
CREATE INDEX invitations_by_email ON invitations (email);
