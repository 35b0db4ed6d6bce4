-- Run by the postgres container on its first start (docker-compose.yml): a sample table for cdc.
CREATE TABLE items (id serial PRIMARY KEY, title text NOT NULL, price numeric(10,2), updated_at timestamptz DEFAULT now());
ALTER ROLE cdc WITH REPLICATION;
