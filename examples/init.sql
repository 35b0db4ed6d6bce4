-- The sample table of the examples: run by the postgres container on its first start
-- (docker-compose.yml), or by hand against a local database (psql -d app -f examples/init.sql,
-- as a superuser: it also lets the role cdc replicate, and makes cdc the table's owner, which
-- `cdc setup` needs to add it to a publication).
CREATE TABLE items (id serial PRIMARY KEY, title text NOT NULL, price numeric(10,2), updated_at timestamptz DEFAULT now());
ALTER TABLE items OWNER TO cdc;
ALTER ROLE cdc WITH REPLICATION;
