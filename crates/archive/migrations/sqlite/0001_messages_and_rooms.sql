-- The archive, version 1 (SQLite). See docs/archive.md.

-- One row per sequenced message. Identity is (room, epoch, offset): re-sent batches insert
-- nothing twice (INSERT ... ON CONFLICT DO NOTHING). The primary key's index is also the
-- paging index: `WHERE room = ? AND epoch = ? AND "offset" < ? ORDER BY "offset" DESC
-- LIMIT ?` is one backward range scan of it.
CREATE TABLE messages (
    room       TEXT   NOT NULL,
    epoch      TEXT   NOT NULL,
    "offset"   INTEGER NOT NULL CHECK ("offset" > 0),
    -- The publisher's user id (`from`; "server" for the server API): purge_user.
    user_id    TEXT   NOT NULL,
    -- When the gateway accepted the publish (ms since the Unix epoch): retention.
    created_ms INTEGER NOT NULL,
    -- `protocol::Data` as MessagePack (byte strings as `bin`).
    payload    BLOB   NOT NULL,
    PRIMARY KEY (room, epoch, "offset")
) WITHOUT ROWID;

-- Retention: DELETE ... WHERE created_ms < ?.
CREATE INDEX messages_created_ms ON messages (created_ms);
-- Erasure: DELETE ... WHERE user_id = ?.
CREATE INDEX messages_user_id ON messages (user_id);

-- Rooms that left Redis (slept) and can be woken with the same epoch and offsets.
CREATE TABLE rooms (
    room         TEXT    PRIMARY KEY,
    epoch        TEXT   NOT NULL,
    -- The last offset assigned in `epoch` (0 before the first message).
    "offset"     INTEGER NOT NULL CHECK ("offset" >= 0),
    max_members  INTEGER NULL,
    history_size INTEGER NOT NULL,
    ttl_secs     INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL,
    saved_ms     INTEGER NOT NULL
);
