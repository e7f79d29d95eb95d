-- Actions as a dimension of pending work: what enforcing a verdict does to each user. Every row
-- written before actions existed is a kick; the column's default keeps intake's inserts and every
-- existing query as they were (adding a column with a constant default rewrites nothing).
ALTER TABLE kicks ADD COLUMN action text NOT NULL DEFAULT 'kick';
