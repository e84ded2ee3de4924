-- Matchmaking tickets (rally-store's TicketStore).
--
-- Ids are canonical hyphenated lowercase UUID text and times Unix milliseconds, as in 0001.
-- Statuses are the lowercase words 'queued', 'matched', 'cancelled' and 'expired', as in the
-- Postgres schema, so a dump moves between the two. Attributes live in child tables with native
-- types (REAL is an IEEE double, so a number comes back bit for bit); they are read whole with
-- their ticket, never filtered.
--
-- Tickets are never deleted by the store. A matched ticket names the room of its match; the match's
-- users are the users of the tickets naming that room, oldest ticket first.

CREATE TABLE tickets (
    id         TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 36),
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    pool       TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('queued', 'matched', 'cancelled', 'expired')),
    created_at INTEGER NOT NULL,
    -- When the ticket expires if still queued.
    expires_at INTEGER NOT NULL,
    -- The match: set exactly when the ticket is matched.
    room_id    TEXT    REFERENCES rooms (id),
    matched_at INTEGER,
    CHECK ((status = 'matched') = (room_id IS NOT NULL)),
    CHECK ((room_id IS NULL) = (matched_at IS NULL))
) STRICT;

-- A user has at most one queued ticket (in any pool).
CREATE UNIQUE INDEX tickets_one_queued_per_user ON tickets (user_id) WHERE status = 'queued';

-- Match rounds: a pool's queued tickets, oldest first (then by id, the candidates' order).
CREATE INDEX tickets_waiting ON tickets (pool, created_at, id) WHERE status = 'queued';

-- Expiry: queued tickets by expiry time.
CREATE INDEX tickets_expiring ON tickets (expires_at) WHERE status = 'queued';

-- A match's tickets, for its user list.
CREATE INDEX tickets_by_room ON tickets (room_id) WHERE room_id IS NOT NULL;

CREATE TABLE ticket_numeric_attributes (
    ticket_id TEXT NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    -- Finite (9e999 reads as infinity; SQLite stores NaN as NULL).
    value     REAL NOT NULL CHECK (value > -9e999 AND value < 9e999),
    PRIMARY KEY (ticket_id, name)
) STRICT;

CREATE TABLE ticket_string_attributes (
    ticket_id TEXT NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    name      TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (ticket_id, name)
) STRICT;
