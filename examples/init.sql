-- The sample table of the examples: run by the postgres container on its first start
-- (docker-compose.yml), or by hand against a local database (psql -d app -f examples/init.sql,
-- as a superuser: it also lets the role cdc replicate).
CREATE TABLE items (id serial PRIMARY KEY, title text NOT NULL, price numeric(10,2), updated_at timestamptz DEFAULT now());
ALTER ROLE cdc WITH REPLICATION;
