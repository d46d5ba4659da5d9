-- Keep restrictions and metadata exactly as written: `json` stores the text (any
-- JSON number, and the \u0000 escape, which `jsonb` refuses or reshapes).
ALTER TABLE keys ALTER COLUMN restrictions TYPE json USING restrictions::json;
ALTER TABLE keys ALTER COLUMN metadata TYPE json USING metadata::json;
