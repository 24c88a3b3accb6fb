-- The database and role the gateway nodes use. Run once, as a superuser, on the primary:
--   psql -h PRIMARY -U postgres -v password="'a long random secret'" -f deploy/postgres/setup.sql
-- The role owns its database and nothing else; the gateways create and migrate the schema
-- themselves at start (refinery migrations, under an advisory lock). Checked by
-- gateway/tests/it/deploy.rs against a real PostgreSQL 15.
CREATE ROLE rcs_relay LOGIN PASSWORD :password;
CREATE DATABASE rcs_relay OWNER rcs_relay;
