-- The ops console's database role for docker-compose.yml (run once, when the database is first
-- created). Its grants come from `bouncer migrate --grant-console bouncer_console` (the
-- console-grants service), once the schema exists.
CREATE ROLE bouncer_console LOGIN PASSWORD 'console';
