//! Rebuilding a projection from position 0 into shadow tables, then switching them in.
//!
//! 1. **Shadow.** A schema `shadow_<time>_<id>` gets an empty copy of each table the projector
//!    owns (`LIKE public.<t> INCLUDING ALL`: columns, defaults, checks, indexes).
//! 2. **Fill.** With `search_path = shadow_<time>_<id>, public` the projector's own code fills
//!    them from the feed up to the head as it was when the rebuild started
//!    ([`Projector::fill`]; the rides projector does it in bulk with `COPY`). Live
//!    workers and readers are not disturbed: they use `public`.
//! 3. **Switch.** One transaction locks the projector's checkpoint (live workers of it
//!    wait), catches the shadow up to the current head with ordinary batches, drops the
//!    live tables, moves the shadow tables into `public` under the old index names,
//!    sets the checkpoint and commits. Readers block for the length of that
//!    transaction and then see the new tables: never a half-built one.
//!
//! A rebuild that fails before the switch leaves the live tables as they were; the
//! shadow schema is dropped (or, after a crash, by the next rebuild's clean-up of
//! schemas named `shadow_%` older than an hour).

use migrations::head_position;
use sqlx::{PgPool, Postgres, Transaction};
use tracing::Instrument;

use crate::runtime::{lock_checkpoint, store_checkpoint, ProjectionError, Projector};

/// Events per catch-up batch during the switch.
const CATCH_UP_STEP: i64 = 1000;

/// Rebuilds `projector` (see the module doc); `progress(position, up_to)` is called as
/// the fill goes on. Returns the new checkpoint.
pub async fn rebuild<P: Projector + ?Sized>(
    pool: &PgPool,
    projector: &P,
    progress: &(dyn Fn(i64, i64) + Sync),
) -> Result<i64, ProjectionError> {
    let name = projector.name().to_owned();
    let span = tracing::info_span!("projector_rebuild", projector = %name);
    async {
        let schema = shadow_name();
        let result = build_and_switch(pool, projector, &schema, progress).await;
        if result.is_err() {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(pool)
                .await;
        }
        let position = result?;
        tracing::info!(position, "projection rebuilt and switched in");
        Ok(position)
    }
    .instrument(span)
    .await
}

/// `SET LOCAL search_path` so the projector's unqualified table names resolve to the
/// shadow tables (and everything else, `events` and `checkpoints`, to `public`).
async fn use_schema(tx: &mut Transaction<'_, Postgres>, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SET LOCAL search_path = {schema}, public"))
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// Creates `schema` with an empty copy of each of `tables`.
pub async fn create_shadow(pool: &PgPool, schema: &str, tables: &[&str]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut *tx)
        .await?;
    for table in tables {
        sqlx::query(&format!(
            "CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

async fn build_and_switch<P: Projector + ?Sized>(
    pool: &PgPool,
    projector: &P,
    schema: &str,
    progress: &(dyn Fn(i64, i64) + Sync),
) -> Result<i64, ProjectionError> {
    let tables = projector.tables();
    drop_stale_shadows(pool).await;
    create_shadow(pool, schema, tables).await?;

    // Fill, outside any lock the live system needs.
    let up_to = head_position(pool).await?;
    let mut tx = pool.begin().await?;
    use_schema(&mut tx, schema).await?;
    projector.fill(&mut tx, up_to, progress).await?;
    tx.commit().await?;

    // Switch.
    let mut tx = pool.begin().await?;
    lock_checkpoint(&mut tx, projector.name()).await?;
    use_schema(&mut tx, schema).await?;
    let mut position = up_to;
    loop {
        let events = migrations::read_feed(&mut *tx, position, CATCH_UP_STEP).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        projector.apply(&mut tx, &events).await?;
        position = last;
    }
    sqlx::query("SET LOCAL search_path = public")
        .execute(&mut *tx)
        .await?;
    for table in tables {
        switch_table(&mut tx, schema, table).await?;
    }
    sqlx::query(&format!("DROP SCHEMA {schema}"))
        .execute(&mut *tx)
        .await?;
    store_checkpoint(&mut tx, projector.name(), position).await?;
    tx.commit().await?;
    progress(position, position);
    Ok(position)
}

/// Replaces `public.<table>` with `<schema>.<table>`, giving the new indexes the names
/// the old ones had (matched by definition), so migrations that name them still work.
async fn switch_table(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    table: &str,
) -> Result<(), sqlx::Error> {
    let old: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1",
    )
    .bind(table)
    .fetch_all(&mut **tx)
    .await?;
    let new: Vec<(String, String)> =
        sqlx::query_as("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2")
            .bind(schema)
            .bind(table)
            .fetch_all(&mut **tx)
            .await?;
    sqlx::query(&format!("DROP TABLE public.{table}"))
        .execute(&mut **tx)
        .await?;
    sqlx::query(&format!("ALTER TABLE {schema}.{table} SET SCHEMA public"))
        .execute(&mut **tx)
        .await?;
    for (new_name, new_def) in &new {
        let wanted = old
            .iter()
            .find(|(_, def)| shape(def) == shape(new_def))
            .map(|(name, _)| name);
        if let Some(old_name) = wanted.filter(|n| *n != new_name) {
            sqlx::query(&format!("ALTER INDEX public.{new_name} RENAME TO {old_name}"))
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// An index definition without its name and schema: `CREATE INDEX x ON s.t USING
/// btree (a)` → `CREATE INDEX ON t USING btree (a)`.
fn shape(def: &str) -> String {
    let Some((head, rest)) = def.split_once(" ON ") else {
        return def.to_owned();
    };
    let head = head.rsplit_once(' ').map_or(head, |(h, _)| h);
    let rest = rest.split_once('.').map_or(rest, |(_, r)| r);
    format!("{head} ON {rest}")
}

/// A new shadow schema's name: `shadow_<unix seconds>_<random>`, so a stale one can be
/// recognised by its age.
fn shadow_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("shadow_{now}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Drops shadow schemas left by rebuilds that crashed (older than an hour).
async fn drop_stale_shadows(pool: &PgPool) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'shadow\\_%'")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for schema in names {
        let born: Option<u64> = schema.split('_').nth(1).and_then(|t| t.parse().ok());
        if born.is_some_and(|t| t + 3600 < now) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(pool)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn index_shapes_ignore_name_and_schema() {
        assert_eq!(
            shape("CREATE INDEX rides_status ON public.rides USING btree (status)"),
            shape("CREATE INDEX rides_status_idx ON shadow_1.rides USING btree (status)")
        );
        assert_eq!(
            shape("CREATE UNIQUE INDEX payments_ride_id_key ON public.payments USING btree (ride_id)"),
            "CREATE UNIQUE INDEX ON payments USING btree (ride_id)"
        );
        assert_ne!(
            shape("CREATE INDEX a ON public.rides USING btree (status)"),
            shape("CREATE INDEX a ON public.rides USING btree (driver_id)")
        );
    }
}
