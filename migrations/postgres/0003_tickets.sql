-- Matchmaking tickets (rally-store's TicketStore).
--
-- Ids are canonical hyphenated lowercase UUID text and times Unix milliseconds, as in 0001.
-- Statuses are the lowercase words 'queued', 'matched', 'cancelled' and 'expired', as in the
-- SQLite schema, so a dump moves between the two. Attributes live in child tables with native
-- types (DOUBLE PRECISION, so a number comes back bit for bit); they are read whole with their
-- ticket, never filtered.
--
-- Ticket ids use the "C" collation so that their order (the tie-break among tickets created in the
-- same millisecond) is byte order, as in SQLite, whatever the database's default collation.
--
-- Tickets are never deleted by the store. A matched ticket names the room of its match; the match's
-- users are the users of the tickets naming that room, oldest ticket first.

CREATE TABLE tickets (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY
               CHECK (id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
    user_id    TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    pool       TEXT   NOT NULL,
    status     TEXT   NOT NULL CHECK (status IN ('queued', 'matched', 'cancelled', 'expired')),
    created_at BIGINT NOT NULL,
    -- When the ticket expires if still queued.
    expires_at BIGINT NOT NULL,
    -- The match: set exactly when the ticket is matched.
    room_id    TEXT COLLATE "C" REFERENCES rooms (id),
    matched_at BIGINT,
    CHECK ((status = 'matched') = (room_id IS NOT NULL)),
    CHECK ((room_id IS NULL) = (matched_at IS NULL))
);

-- A user has at most one queued ticket (in any pool).
CREATE UNIQUE INDEX tickets_one_queued_per_user ON tickets (user_id) WHERE status = 'queued';

-- Match rounds: a pool's queued tickets, oldest first (then by id, the candidates' order).
CREATE INDEX tickets_waiting ON tickets (pool, created_at, id) WHERE status = 'queued';

-- Expiry: queued tickets by expiry time.
CREATE INDEX tickets_expiring ON tickets (expires_at) WHERE status = 'queued';

-- A match's tickets, for its user list.
CREATE INDEX tickets_by_room ON tickets (room_id) WHERE room_id IS NOT NULL;

CREATE TABLE ticket_numeric_attributes (
    ticket_id TEXT COLLATE "C" NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    name      TEXT             NOT NULL,
    -- Finite (NaN compares above infinity).
    value     DOUBLE PRECISION NOT NULL CHECK (value > '-Infinity' AND value < 'Infinity'),
    PRIMARY KEY (ticket_id, name)
);

CREATE TABLE ticket_string_attributes (
    ticket_id TEXT COLLATE "C" NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (ticket_id, name)
);
