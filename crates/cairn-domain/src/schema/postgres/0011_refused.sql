-- An invitation whose email the mail server refused for good is 'refused', with when
-- and what the server said.
ALTER TABLE invitations DROP CONSTRAINT invitations_status_check;
ALTER TABLE invitations ADD CONSTRAINT invitations_status_check
    CHECK (status IN ('pending', 'accepted', 'revoked', 'expired', 'refused'));
ALTER TABLE invitations ADD COLUMN refused_at TIMESTAMPTZ;
ALTER TABLE invitations ADD COLUMN delivery_reply TEXT;
