-- All tags of a batch in one set-based statement: $1 is the array of new tag ids.
INSERT INTO tags (tag_id, batch_id, product_id)
SELECT id, $2, $3
FROM unnest($1::text[]) AS id
ON CONFLICT (tag_id) DO NOTHING
