-- Lock the tags a batch counts on, in tag_id order: consumers whose batches share tags then
-- take the row locks in the same order and cannot deadlock (the UPDATE alone locks in join
-- order). Unknown tags have no row and lock nothing.
SELECT tag_id
FROM tags
WHERE tag_id = ANY($1::text[])
ORDER BY tag_id
FOR UPDATE
