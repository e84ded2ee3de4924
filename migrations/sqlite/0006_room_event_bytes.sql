-- How many bytes of event payload each room holds, kept with every append and deletion, so the
-- retention can bound a room's history in bytes as well as in events.
ALTER TABLE rooms ADD COLUMN event_bytes INTEGER NOT NULL DEFAULT 0;

UPDATE rooms SET event_bytes = (
    SELECT coalesce(sum(length(CAST(payload AS BLOB))), 0)
    FROM room_events WHERE room_events.room_id = rooms.id
);
