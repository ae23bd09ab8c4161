-- The change log's identity: a stream position (a transaction id) means something only within
-- one change log. A new database gets a new `log_id`; a restored copy brings its old one back,
-- which is why the identity the service announces also covers the database's and this table's
-- object ids and the cluster's system identifier and timeline (change_log.py).
ALTER TABLE change_log_state ADD COLUMN log_id uuid NOT NULL DEFAULT gen_random_uuid();
