-- `entitlements status` lists the Clerk plans the catalog lacks that recent deliveries named
-- (their notes start "unknown plan slug", service/domain/unknown_plans.py). A partial index of
-- just those deliveries by time, so the status read does not scan every stored delivery.
-- (Numbered 0011, 0010 left free: the outbound notifier, written alongside, has a migration
-- of its own to renumber after 0009.)
CREATE FUNCTION names_unknown_plan(notes text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT EXISTS (SELECT 1 FROM unnest(notes) AS n WHERE n LIKE 'unknown plan slug %') $$;

CREATE INDEX deliveries_naming_unknown_plans ON deliveries (recorded_at)
    WHERE names_unknown_plan(notes);
