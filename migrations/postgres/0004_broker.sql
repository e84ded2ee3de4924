-- The broker's shared state (rally-store's BrokerStore): presence, replica heartbeats and pairs.
--
-- Ids are canonical hyphenated lowercase UUID text and times Unix milliseconds, as in 0001 (ids
-- are TEXT, not uuid, because they reference users (id), which is TEXT). A pair's state is the
-- lowercase word 'pending' or 'agreed', as in the SQLite schema, so a dump moves between the two.
-- Announcements and relay allocations are opaque bytes.
--
-- A pair is stored once, under its two users in order: user_low is the one whose id sorts first.
-- User ids use the "C" collation, under which canonical lowercase hex text compares byte by byte,
-- exactly as the UUIDs' bytes do (and as in SQLite), so user_low is rally-store's `Pair::low`, and
-- ties are broken in the same order on both backends, whatever the database's default collation.
--
-- Rows are deleted by the store: a presence row and its user's pairs when the user is forgotten,
-- a replica's row once it is found silent, a pair when it is rejected or closed. Presence rows and
-- pairs also go with their user.

-- One row per user that attached and was not forgotten: its current (or last) attachment.
CREATE TABLE broker_presence (
    user_id       TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    attachment_id TEXT   NOT NULL
                  CHECK (attachment_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
    replica_id    TEXT   NOT NULL
                  CHECK (replica_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
    -- What the client announced (rally-store's MAX_ANNOUNCEMENT_BYTES).
    announcement  BYTEA  NOT NULL CHECK (octet_length(announcement) <= 4096),
    attached_at   BIGINT NOT NULL,
    -- When the attachment ended; NULL while it is live.
    detached_at   BIGINT
);

-- A replica's live attachments (detach_replica, detach_silent_replicas).
CREATE INDEX broker_presence_live ON broker_presence (replica_id) WHERE detached_at IS NULL;

-- Detached rows, longest detached first (detached_before).
CREATE INDEX broker_presence_detached ON broker_presence (detached_at, user_id)
    WHERE detached_at IS NOT NULL;

-- The latest heartbeat of each replica that recorded one and was not found silent since. Few
-- rows (one per running replica): scanned whole.
CREATE TABLE broker_replicas (
    replica_id   TEXT   NOT NULL PRIMARY KEY
                 CHECK (replica_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE broker_pairs (
    user_low         TEXT COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_high        TEXT COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    state            TEXT   NOT NULL CHECK (state IN ('pending', 'agreed')),
    -- Who asked, while the request is pending; NULL once agreed.
    requester        TEXT COLLATE "C",
    -- The agreed pair's relay allocation (16 bytes) and when its grant expires: both or neither.
    relay_allocation BYTEA  CHECK (octet_length(relay_allocation) = 16),
    relay_expires_at BIGINT,
    -- When the first request was made.
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (user_low, user_high),
    CHECK (user_low < user_high),
    CHECK ((state = 'pending') = (requester IS NOT NULL)),
    CHECK (requester IS NULL OR requester IN (user_low, user_high)),
    CHECK ((relay_allocation IS NULL) = (relay_expires_at IS NULL)),
    CHECK (relay_allocation IS NULL OR state = 'agreed')
);

-- A user's pairs (pairs_of, the pair limits, forget): as user_low through the primary key, as
-- user_high through this index.
CREATE INDEX broker_pairs_by_high ON broker_pairs (user_high);

-- A user's unanswered requests (the outgoing pending limit).
CREATE INDEX broker_pairs_outgoing ON broker_pairs (requester) WHERE requester IS NOT NULL;
