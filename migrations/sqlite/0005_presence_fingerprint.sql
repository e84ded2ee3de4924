-- A certificate fingerprint belongs to one online user: the broker refuses a Hello announcing a
-- fingerprint another live attachment announced (peers pin fingerprints, and map incoming
-- connections to users by them). Rows written before this migration have none (NULL).
ALTER TABLE broker_presence ADD COLUMN fingerprint BLOB CHECK (fingerprint IS NULL OR length(fingerprint) = 32);

CREATE UNIQUE INDEX broker_presence_fingerprint ON broker_presence (fingerprint)
    WHERE detached_at IS NULL AND fingerprint IS NOT NULL;
