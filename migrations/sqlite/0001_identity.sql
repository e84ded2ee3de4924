-- Accounts, device bindings, sessions and refresh tokens (rally-store's IdentityStore).
--
-- Ids are canonical hyphenated lowercase UUID text, as in the Postgres schema, so a dump moves
-- between the two. Times are Unix milliseconds. Secrets are never stored: device ids and refresh
-- tokens only as their SHA-256 (32 bytes).

CREATE TABLE users (
    id            TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 36),
    -- The login name as typed; NULL for device-only accounts.
    username      TEXT,
    -- username, ASCII-lowercased by the application: what uniqueness and look-up compare.
    username_key  TEXT    CONSTRAINT users_username_key_unique UNIQUE,
    display_name  TEXT    NOT NULL,
    -- argon2id PHC string; NULL for accounts without a password.
    password_hash TEXT,
    created_at    INTEGER NOT NULL,
    CHECK ((username IS NULL) = (username_key IS NULL))
) STRICT;

CREATE TABLE devices (
    device_hash BLOB    NOT NULL PRIMARY KEY CHECK (length(device_hash) = 32),
    user_id     TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX devices_by_user ON devices (user_id);

CREATE TABLE sessions (
    id            TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 36),
    user_id       TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    -- Why the session ended: 'signed_out', 'signed_out_everywhere' or 'refresh_token_reused'.
    revoke_reason TEXT,
    CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL))
) STRICT;

CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash BLOB    NOT NULL PRIMARY KEY CHECK (length(token_hash) = 32),
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- Set when the token was exchanged for the next one; presenting it again is reuse.
    rotated_at INTEGER
) STRICT;

CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
