-- Prepares an existing PostgreSQL database (13 or newer) for walhook. Run it once, as a
-- superuser (or as the owner of the tables, if that role may create roles with REPLICATION),
-- connected to the application database:
--
--   psql "postgres://admin@db.internal:5432/app" -v password='a-long-random-secret' \
--        -v tables='public.orders, public.customers' -f sql/prepare.sql
--
-- Variables: password (required; the new role's), tables (required; every table a trigger
-- names, schema-qualified, comma-separated), role (default walhook), publication (default
-- walhook; the `source.publication` of walhook.toml), grant (RDS / Aurora: rds_replication,
-- given instead of the REPLICATION attribute). Running it again updates the role's password
-- and the publication's table list.
--
-- What it does:
--   1. checks wal_level = logical (set it first: ALTER SYSTEM SET wal_level = logical, then
--      restart PostgreSQL; on managed Postgres see the README's notes);
--   2. creates the role with LOGIN and REPLICATION (replication connections and slots need
--      it; walhook needs no superuser) and lets it connect to this database;
--   3. creates the publication FOR TABLE those tables, owned by you (adding a table to a
--      publication needs ownership of the table). walhook then finds it publishing exactly
--      its tables and changes nothing; when your triggers name other tables, run this again
--      with the new list (walhook, not being the owner, cannot alter it itself).
--   4. creates schema walhook owned by the role (walhook keeps its parked events and the
--      slot's record there and applies its own migrations); if the schema exists, the role
--      gets USAGE and CREATE on it and SELECT, INSERT, UPDATE, DELETE on its tables.
-- The replication slot is created by walhook (`walhook setup`, or `walhook run` on start).
-- Tables need a primary key or REPLICA IDENTITY FULL; FULL also gives updates their old row.

\set ON_ERROR_STOP on
\if :{?role}
\else
  \set role walhook
\endif
\if :{?publication}
\else
  \set publication walhook
\endif
\if :{?password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'sql/prepare.sql needs -v password=... (the password of the role walhook logs in as)'; END $$;
\endif
\if :{?tables}
\else
  DO $$ BEGIN RAISE EXCEPTION 'sql/prepare.sql needs -v tables=... (the tables your triggers name, e.g. public.orders)'; END $$;
\endif

DO $$
BEGIN
  IF current_setting('wal_level') <> 'logical' THEN
    RAISE EXCEPTION 'wal_level is %, walhook needs logical', current_setting('wal_level')
      USING HINT = 'ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (managed Postgres: see the README)';
  END IF;
END $$;

-- RDS / Aurora (-v grant=rds_replication): the REPLICATION attribute cannot be given there;
-- membership in rds_replication stands for it.
\if :{?grant}
  \set attributes LOGIN
\else
  \set attributes 'LOGIN REPLICATION'
\endif
SELECT format('CREATE ROLE %I %s PASSWORD %L', :'role', :'attributes', :'password')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I %s PASSWORD %L', :'role', :'attributes', :'password')
 WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
\if :{?grant}
  SELECT format('GRANT %I TO %I', :'grant', :'role') \gexec
\endif
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'role') \gexec

-- publish_via_partition_root: a partitioned table's changes come under its own name.
SELECT format('CREATE PUBLICATION %I FOR TABLE %s WITH (publish_via_partition_root = true)',
              :'publication', :'tables')
 WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = :'publication') \gexec
SELECT format('ALTER PUBLICATION %I SET TABLE %s', :'publication', :'tables')
 WHERE EXISTS (SELECT FROM pg_publication WHERE pubname = :'publication') \gexec

SELECT format('CREATE SCHEMA walhook AUTHORIZATION %I', :'role')
 WHERE to_regnamespace('walhook') IS NULL \gexec
SELECT format('GRANT USAGE, CREATE ON SCHEMA walhook TO %I', :'role') \gexec
SELECT format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA walhook TO %I', :'role') \gexec
SELECT format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA walhook TO %I', :'role') \gexec

SELECT :'role' AS role, :'publication' AS publication,
       string_agg(format('%I.%I', schemaname, tablename), ', ' ORDER BY schemaname, tablename) AS tables
  FROM pg_publication_tables WHERE pubname = :'publication';
