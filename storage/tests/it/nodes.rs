//! PostgreSQL-only: several nodes on one database.
