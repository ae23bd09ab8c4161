-- Grace anchored on the first sighting of a past-due episode, whatever the arrival order:
-- (`last_ok_ms`, `last_ok_rank`) is the newest event that saw the item not past due,
-- `past_due_marks` the past-due observations after it as flattened (event_ms, anchor_ms)
-- pairs (see service/domain/past_due.py).
ALTER TABLE items ADD COLUMN last_ok_ms bigint;
ALTER TABLE items ADD COLUMN last_ok_rank smallint;
ALTER TABLE items ADD COLUMN past_due_marks bigint[] NOT NULL DEFAULT '{}';
UPDATE items SET past_due_marks = ARRAY[event_ms, COALESCE(past_due_at_ms, event_ms)]
 WHERE status = 'past_due';
