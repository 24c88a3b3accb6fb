//! The PostgreSQL backend (issue 13), in progress: so far its schema, versioned and applied
//! by refinery (`storage/migrations/V<n>__<name>.sql`, embedded at build time; each applied
//! once, in order, recorded in `refinery_schema_history`). The store itself is not written
//! yet, so no configuration selects this backend.

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Applies the migrations not yet applied (none if the schema is current); returns how many
/// it applied and the schema version now in force.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<(usize, u32), crate::StoreError> {
    let runner = embedded::migrations::runner();
    let latest = runner
        .get_migrations()
        .iter()
        .map(refinery::Migration::version)
        .max()
        .unwrap_or(0);
    let report = runner
        .run_async(client)
        .await
        .map_err(|e| crate::StoreError::Backend(format!("schema migration: {e}")))?;
    Ok((report.applied_migrations().len(), latest))
}
