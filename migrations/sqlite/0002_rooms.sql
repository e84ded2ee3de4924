-- Rooms, their members, data, invitations, kick bans and event log (rally-store's RoomStore).
--
-- Ids are canonical hyphenated lowercase UUID text and times Unix milliseconds, as in 0001.
-- Enumerations are stored as lowercase words (visibility 'public' or 'private', join policy 'open'
-- or 'invite_only', event kinds 'member_joined', ...), and event payloads as JSON text: the same
-- words and JSON as in the Postgres schema, so a dump moves between the two.
--
-- Rooms are never deleted: a closed room keeps its row, data, invitations and retained events,
-- so it stays readable; only its members are gone.

CREATE TABLE rooms (
    id          TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 36),
    -- A member while the room is open; the last owner once it closed.
    owner       TEXT    NOT NULL REFERENCES users (id),
    capacity    INTEGER NOT NULL CHECK (capacity > 0),
    visibility  TEXT    NOT NULL CHECK (visibility IN ('public', 'private')),
    join_policy TEXT    NOT NULL CHECK (join_policy IN ('open', 'invite_only')),
    created_at  INTEGER NOT NULL,
    -- The sequence of the room's latest event (0 before any).
    sequence    INTEGER NOT NULL DEFAULT 0 CHECK (sequence >= 0),
    closed_at   INTEGER
) STRICT;

-- ListRooms: open public rooms, newest first, then by id (the page cursor's order).
CREATE INDEX rooms_listed ON rooms (created_at DESC, id DESC)
    WHERE closed_at IS NULL AND visibility = 'public';

CREATE TABLE room_members (
    room_id      TEXT    NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    -- Unique: a user is in at most one room (and its index finds a user's room).
    user_id      TEXT    NOT NULL CONSTRAINT room_members_user_unique UNIQUE
                 REFERENCES users (id),
    -- The user's display name when it joined (as in its MemberJoined event).
    display_name TEXT    NOT NULL,
    joined_at    INTEGER NOT NULL,
    -- Longest-present first: 0 for the creator, else the sequence of the member's MemberJoined.
    join_order   INTEGER NOT NULL CHECK (join_order >= 0),
    PRIMARY KEY (room_id, user_id),
    UNIQUE (room_id, join_order)
) STRICT;

CREATE TABLE room_data (
    room_id TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (room_id, key)
) STRICT;

-- Invited users need not exist (yet), so there is no foreign key to users.
CREATE TABLE room_invites (
    room_id TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL CHECK (length(user_id) = 36),
    PRIMARY KEY (room_id, user_id)
) STRICT;

-- Users kicked from a room and not invited again since.
CREATE TABLE room_bans (
    room_id TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL CHECK (length(user_id) = 36),
    PRIMARY KEY (room_id, user_id)
) STRICT;

-- The retained tail of each room's event log: events older than the retention are deleted by
-- the transaction that appends newer ones.
CREATE TABLE room_events (
    room_id     TEXT    NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    sequence    INTEGER NOT NULL CHECK (sequence > 0),
    occurred_at INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('member_joined', 'member_left', 'data_changed',
                                                 'owner_changed', 'room_closed')),
    payload     TEXT    NOT NULL CHECK (json_valid(payload)),
    PRIMARY KEY (room_id, sequence)
) STRICT;
