-- The archive, version 1 (PostgreSQL). See docs/archive.md.

-- One row per sequenced message. Identity is (room, epoch, offset): re-sent batches insert
-- nothing twice (INSERT ... ON CONFLICT DO NOTHING). The primary key's index is also the
-- paging index: `WHERE room = $1 AND epoch = $2 AND "offset" < $3 ORDER BY "offset" DESC
-- LIMIT $4` is one backward range scan of it.
CREATE TABLE messages (
    room       TEXT   NOT NULL,
    epoch      TEXT   NOT NULL,
    "offset"   BIGINT NOT NULL CHECK ("offset" > 0),
    -- The publisher's user id (`from`; "server" for the server API): purge_user.
    user_id    TEXT   NOT NULL,
    -- When the gateway accepted the publish (ms since the Unix epoch): retention.
    created_ms BIGINT NOT NULL,
    -- `protocol::Data` as MessagePack (byte strings as `bin`).
    payload    BYTEA  NOT NULL,
    PRIMARY KEY (room, epoch, "offset")
);

-- Retention: DELETE ... WHERE created_ms < $1.
CREATE INDEX messages_created_ms ON messages (created_ms);
-- Erasure: DELETE ... WHERE user_id = $1.
CREATE INDEX messages_user_id ON messages (user_id);

-- Rooms that left Redis (slept) and can be woken with the same epoch and offsets.
CREATE TABLE rooms (
    room         TEXT   PRIMARY KEY,
    epoch        TEXT   NOT NULL,
    -- The last offset assigned in `epoch` (0 before the first message).
    "offset"     BIGINT NOT NULL CHECK ("offset" >= 0),
    max_members  BIGINT NULL,
    history_size BIGINT NOT NULL,
    ttl_secs     BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL,
    saved_ms     BIGINT NOT NULL
);
