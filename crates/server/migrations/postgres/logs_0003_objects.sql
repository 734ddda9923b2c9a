-- A chunk moved to the object store keeps its row (the index of seq ranges) with its
-- records emptied and the object's key here.
ALTER TABLE log_chunks ADD COLUMN object_key TEXT
