//! The audit log's keeper: appends every event to the Merkle tree (`domain::merkle`) in
//! position order, signs tree heads, stores them in `tree_heads` and publishes them on
//! JetStream `AUDIT` (`audit.tree_head`), so copies live outside the database.
//!
//! ## Exactly one tree
//! - **One signer at a time**: [`Signer::run`] holds the PostgreSQL advisory lock
//!   `nebengjek.audit` on a connection of its own and does all its writes on that
//!   connection, so when the connection dies the lock and the half-done batch go
//!   together; a standby in another process takes over.
//! - **Each batch is one transaction**: the new nodes, the tree's size (read `FOR
//!   UPDATE` and moved only from the size the batch started at) and the signed head
//!   commit together. A crash at any point leaves the tree at a batch boundary; the
//!   next signer reloads the frontier from the stored nodes and goes on: no gap, no
//!   leaf twice, no head without its nodes.
//! - **O(log n) per event**: the frontier (≤ 64 hashes) is kept in memory; appending a
//!   leaf completes at most log n nodes, never recomputes the tree.
//! - **Publishing is an outbox**: heads are stored unpublished, published in order
//!   (`Nats-Msg-Id` = `<store_id>:<tree_size>`, so a repeat is dropped), then marked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use base64::Engine as _;
use domain::merkle::{
    self, leaf_hash, ConsistencyProof, Frontier, Hash, InclusionProof, MerkleError, NodeId, SignedTreeHead,
};
use ed25519_dalek::SigningKey;
use sqlx::{Connection, PgConnection, PgExecutor, PgPool};
use tokio::sync::watch;

use crate::runtime::{listen, FALLBACK_WAKE};

/// Where development keeps its signing key when `AUDIT_SIGNING_KEY_FILE` is unset.
pub const DEVELOPMENT_KEY_FILE: &str = ".nebengjek/audit-signing-key.pem";

/// Why the log could not move on.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// PostgreSQL refused or was unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker refused or was unreachable.
    #[error("JetStream error: {0}")]
    JetStream(String),
    /// The stored tree is not a tree (a missing node, a bad proof request).
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    /// The signing key cannot be read or made.
    #[error("{0}")]
    Key(String),
    /// A test asked the signer to die here.
    #[error("injected fault")]
    Injected,
}

fn js_error(e: impl std::fmt::Display) -> AuditError {
    AuditError::JetStream(e.to_string())
}

// ---------------------------------------------------------------- keys

/// The DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410): the 32-byte seed
/// follows.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Reads an Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuditError::Key(format!("cannot read {}: {e}", path.display())))?;
    parse_signing_key(&text).map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))
}

/// Parses an Ed25519 PKCS#8 PEM private key.
pub fn parse_signing_key(pem: &str) -> Result<SigningKey, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PRIVATE KEY-----")
        .collect();
    if body.is_empty() {
        return Err("not a PEM \"PRIVATE KEY\" (PKCS#8)".into());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("the PEM body is not base64: {e}"))?;
    match der.strip_prefix(&PKCS8_PREFIX[..]) {
        Some(seed) if seed.len() == 32 => {
            let mut raw = [0u8; 32];
            raw.copy_from_slice(seed);
            Ok(SigningKey::from_bytes(&raw))
        }
        _ => Err("not an Ed25519 PKCS#8 private key".into()),
    }
}

/// The PKCS#8 PEM of `key`.
pub fn signing_key_pem(key: &SigningKey) -> String {
    let mut der = PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&key.to_bytes());
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// Reads the key at `path`, creating a new one there first if there is none
/// (development). Safe against several processes starting at once: the key is written
/// to a file of its own and linked into place, so nobody reads half a key.
pub fn read_or_create_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| AuditError::Key(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        let key = SigningKey::from_bytes(&seed);
        let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
        write_private(&tmp, &signing_key_pem(&key))?;
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => tracing::warn!(path = %path.display(), "created a development audit signing key"),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(AuditError::Key(format!("cannot write {}: {e}", path.display()))),
        }
    }
    read_signing_key(path)
}

fn write_private(path: &Path, text: &str) -> Result<(), AuditError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| AuditError::Key(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| AuditError::Key(format!("cannot write {}: {e}", path.display())))
}

// ---------------------------------------------------------------- reading the tree

/// Leaves in the tree.
pub async fn tree_size<'e>(db: impl PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    let size: i64 = sqlx::query_scalar("SELECT size FROM audit_tree")
        .fetch_one(db)
        .await?;
    Ok(size as u64)
}

/// The stored nodes among `ids`.
pub async fn fetch_nodes<'e>(
    db: impl PgExecutor<'e>,
    ids: &[NodeId],
) -> Result<HashMap<NodeId, Hash>, sqlx::Error> {
    let levels: Vec<i16> = ids.iter().map(|id| i16::from(id.level)).collect();
    let indexes: Vec<i64> = ids.iter().map(|id| id.index as i64).collect();
    let rows: Vec<(i16, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT n.level, n.idx, n.hash FROM audit_tree_nodes n \
         JOIN UNNEST($1::smallint[], $2::bigint[]) AS x(l, i) ON n.level = x.l AND n.idx = x.i",
    )
    .bind(&levels)
    .bind(&indexes)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(level, index, hash)| {
            let hash: Hash = hash.try_into().ok()?;
            Some((
                NodeId {
                    level: level as u8,
                    index: index as u64,
                },
                hash,
            ))
        })
        .collect())
}

/// Runs `compute` over the stored nodes it needs, fetched in one query.
async fn with_nodes<'e, T>(
    db: impl PgExecutor<'e>,
    compute: impl Fn(&mut dyn FnMut(NodeId) -> Option<Hash>) -> Result<T, MerkleError>,
) -> Result<T, AuditError> {
    let ids = merkle::nodes_needed(|get| {
        let _ = compute(get);
    });
    let nodes = fetch_nodes(db, &ids).await?;
    Ok(compute(&mut |id| nodes.get(&id).copied())?)
}

/// The frontier of the stored tree of `size` leaves.
pub async fn load_frontier<'e>(db: impl PgExecutor<'e>, size: u64) -> Result<Frontier, AuditError> {
    let ids = Frontier::ids(size);
    let nodes = fetch_nodes(db, &ids).await?;
    let hashes = ids
        .iter()
        .map(|id| nodes.get(id).copied().ok_or(MerkleError::MissingNode(*id)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Frontier::from_nodes(size, hashes)?)
}

/// The root of the stored tree's first `size` leaves.
pub async fn root_at(pool: &PgPool, size: u64) -> Result<Hash, AuditError> {
    with_nodes(pool, |get| merkle::subtree_hash(0, size, &mut |id| get(id))).await
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves.
pub async fn prove_inclusion(
    pool: &PgPool,
    index: u64,
    size: u64,
) -> Result<(InclusionProof, Hash), AuditError> {
    check_size(pool, size).await?;
    let (path, leaf) = with_nodes(pool, |get| {
        let path = merkle::inclusion_proof(index, size, &mut |id| get(id))?;
        let leaf = merkle::subtree_hash(index, 1, &mut |id| get(id))?;
        Ok((path, leaf))
    })
    .await?;
    Ok((
        InclusionProof {
            leaf_index: index,
            tree_size: size,
            leaf_hash: merkle::to_hex(&leaf),
            audit_path: path.iter().map(|h| merkle::to_hex(h)).collect(),
        },
        leaf,
    ))
}

/// The consistency proof from `first` to `second` leaves.
pub async fn prove_consistency(
    pool: &PgPool,
    first: u64,
    second: u64,
) -> Result<ConsistencyProof, AuditError> {
    check_size(pool, second).await?;
    let proof = with_nodes(pool, |get| {
        merkle::consistency_proof(first, second, &mut |id| get(id))
    })
    .await?;
    Ok(ConsistencyProof {
        first,
        second,
        proof: proof.iter().map(|h| merkle::to_hex(h)).collect(),
    })
}

async fn check_size(pool: &PgPool, size: u64) -> Result<(), AuditError> {
    let have = tree_size(pool).await?;
    if size > have {
        return Err(MerkleError::OutOfRange(format!("the log has {have} leaves, not {size}")).into());
    }
    Ok(())
}

type HeadRow = (i64, String, String, String, String);

fn head_of(row: HeadRow) -> SignedTreeHead {
    SignedTreeHead {
        tree_size: row.0 as u64,
        root_hash: row.1,
        timestamp: row.2,
        key_id: row.3,
        signature: row.4,
    }
}

/// The stored head of `size` leaves, or the latest one.
pub async fn stored_head<'e>(
    db: impl PgExecutor<'e>,
    size: Option<u64>,
) -> Result<Option<SignedTreeHead>, sqlx::Error> {
    let row: Option<HeadRow> = sqlx::query_as(
        "SELECT tree_size, root_hash, \"timestamp\", key_id, signature FROM tree_heads \
         WHERE $1::bigint IS NULL OR tree_size = $1 ORDER BY tree_size DESC LIMIT 1",
    )
    .bind(size.map(|s| s as i64))
    .fetch_optional(db)
    .await?;
    Ok(row.map(head_of))
}

/// Every stored head, smallest first.
pub async fn stored_heads<'e>(db: impl PgExecutor<'e>) -> Result<Vec<SignedTreeHead>, sqlx::Error> {
    let rows: Vec<HeadRow> = sqlx::query_as(
        "SELECT tree_size, root_hash, \"timestamp\", key_id, signature FROM tree_heads ORDER BY tree_size",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(head_of).collect())
}

// ---------------------------------------------------------------- the signer

/// How the signer runs.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// JetStream stream (`AUDIT`).
    pub stream: String,
    /// Subject of the heads (`audit.tree_head`).
    pub subject: String,
    /// A new head at least this often while events arrive (`AUDIT_TREE_HEAD_SECONDS`).
    pub head_interval: Duration,
    /// Leaves per transaction.
    pub batch: i64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            stream: "AUDIT".into(),
            subject: "audit.tree_head".into(),
            head_interval: Duration::from_secs(10),
            batch: 10_000,
        }
    }
}

/// Where a test makes the signer's connection die in the middle of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// After the nodes are inserted, before the size moves.
    AfterNodes,
    /// After the head is inserted, before the commit.
    AfterHead,
}

/// The one writer of the tree and its heads.
#[derive(Debug, Clone)]
pub struct Signer {
    pool: PgPool,
    js: Option<jetstream::Context>,
    key: SigningKey,
    config: AuditConfig,
    store_id: uuid::Uuid,
    fault: std::sync::Arc<std::sync::Mutex<Option<Fault>>>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Leaves appended.
    pub appended: u64,
    /// The tree's size after.
    pub size: u64,
    /// The size of the head signed, if one was.
    pub signed: Option<u64>,
}

/// The signer's state between steps: the tree as last committed and the last head.
#[derive(Debug, Clone)]
pub struct Cursor {
    frontier: Frontier,
    signed_size: Option<u64>,
    signed_at: Instant,
}

impl Signer {
    /// A signer; with a NATS client, creates the stream (subject `config.subject`) if
    /// there is none.
    pub async fn new(
        pool: PgPool,
        nats: Option<async_nats::Client>,
        key: SigningKey,
        config: AuditConfig,
    ) -> Result<Self, AuditError> {
        let store_id = migrations::store_id(&pool).await?;
        let js = match nats {
            Some(client) => {
                let js = jetstream::new(client);
                js.get_or_create_stream(stream::Config {
                    name: config.stream.clone(),
                    subjects: vec![config.subject.clone()],
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .map_err(js_error)?;
                Some(js)
            }
            None => None,
        };
        Ok(Self {
            pool,
            js,
            key,
            config,
            store_id,
            fault: Default::default(),
        })
    }

    /// Makes the next step die at `fault` (tests).
    pub fn inject(&self, fault: Fault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = Some(fault);
        }
    }

    /// Reads where the stored tree stands.
    pub async fn cursor(&self, conn: &mut PgConnection) -> Result<Cursor, AuditError> {
        let size = tree_size(&mut *conn).await?;
        let frontier = load_frontier(&mut *conn, size).await?;
        let signed_size: Option<i64> = sqlx::query_scalar("SELECT max(tree_size) FROM tree_heads")
            .fetch_one(&mut *conn)
            .await?;
        Ok(Cursor {
            frontier,
            signed_size: signed_size.map(|s| s as u64),
            signed_at: Instant::now()
                .checked_sub(self.config.head_interval)
                .unwrap_or_else(Instant::now),
        })
    }

    /// One batch in one transaction on `conn`: up to `batch` new events appended, and a
    /// head signed when `sign` or when the last one is older than the interval and the
    /// tree grew since. `cursor` moves only when the transaction committed.
    pub async fn step(
        &self,
        conn: &mut PgConnection,
        cursor: &mut Cursor,
        sign: bool,
    ) -> Result<Step, AuditError> {
        let fault = self.fault.lock().ok().and_then(|mut f| f.take());
        let mut tx = conn.begin().await?;
        let size: i64 = sqlx::query_scalar("SELECT size FROM audit_tree FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let mut frontier = if size as u64 == cursor.frontier.size() {
            cursor.frontier.clone()
        } else {
            // Another writer moved it (only possible without the lock): start from the
            // stored tree.
            load_frontier(&mut *tx, size as u64).await?
        };
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT position, hash FROM events WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(size)
        .bind(self.config.batch)
        .fetch_all(&mut *tx)
        .await?;
        let (mut levels, mut indexes, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
        let mut appended = 0u64;
        for (position, hash) in &rows {
            // Positions are dense; stop at a hole rather than skip it.
            if *position as u64 != frontier.size() + 1 {
                break;
            }
            frontier.push(leaf_hash(hash), |id, h| {
                levels.push(i16::from(id.level));
                indexes.push(id.index as i64);
                hashes.push(h.to_vec());
            });
            appended += 1;
        }
        if appended > 0 {
            sqlx::query("INSERT INTO audit_tree_nodes (level, idx, hash) SELECT * FROM UNNEST($1::smallint[], $2::bigint[], $3::bytea[])")
                .bind(&levels)
                .bind(&indexes)
                .bind(&hashes)
                .execute(&mut *tx)
                .await?;
            if fault == Some(Fault::AfterNodes) {
                return Err(kill(&mut tx).await);
            }
            let moved = sqlx::query("UPDATE audit_tree SET size = $2, updated_at = now() WHERE size = $1")
                .bind(size)
                .bind(frontier.size() as i64)
                .execute(&mut *tx)
                .await?;
            if moved.rows_affected() != 1 {
                return Err(AuditError::Merkle(MerkleError::Invalid(
                    "the tree moved under the signer",
                )));
            }
        }
        let size = frontier.size();
        let due = sign || cursor.signed_at.elapsed() >= self.config.head_interval;
        let grown = cursor.signed_size.is_none_or(|s| s < size);
        let mut signed = None;
        if due && grown && size > 0 {
            let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let head = SignedTreeHead::sign(size, &frontier.root(), timestamp, &self.key);
            let inserted = sqlx::query(
                "INSERT INTO tree_heads (tree_size, root_hash, \"timestamp\", key_id, signature) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tree_size) DO NOTHING",
            )
            .bind(head.tree_size as i64)
            .bind(&head.root_hash)
            .bind(&head.timestamp)
            .bind(&head.key_id)
            .bind(&head.signature)
            .execute(&mut *tx)
            .await?;
            if fault == Some(Fault::AfterHead) {
                return Err(kill(&mut tx).await);
            }
            if inserted.rows_affected() == 1 {
                signed = Some(size);
            }
        }
        tx.commit().await?;
        cursor.frontier = frontier;
        if signed.is_some() {
            cursor.signed_size = Some(size);
            cursor.signed_at = Instant::now();
        }
        if appended > 0 {
            metrics::counter!("nebengjek_audit_leaves_total").increment(appended);
        }
        Ok(Step {
            appended,
            size,
            signed,
        })
    }

    /// Publishes the stored heads not yet on the stream, in order; returns how many.
    pub async fn publish(&self, conn: &mut PgConnection) -> Result<usize, AuditError> {
        let Some(js) = &self.js else { return Ok(0) };
        let rows: Vec<HeadRow> = sqlx::query_as(
            "SELECT tree_size, root_hash, \"timestamp\", key_id, signature FROM tree_heads \
             WHERE NOT published ORDER BY tree_size",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut published = 0;
        for head in rows.into_iter().map(head_of) {
            let body = serde_json::to_vec(&head).map_err(js_error)?;
            let message = jetstream::message::PublishMessage::build()
                .payload(body.into())
                .message_id(format!("{}:{}", self.store_id, head.tree_size))
                .header(crate::relay::STORE_ID_HEADER, self.store_id.to_string().as_str());
            js.send_publish(self.config.subject.clone(), message)
                .await
                .map_err(js_error)?
                .await
                .map_err(js_error)?;
            sqlx::query("UPDATE tree_heads SET published = true WHERE tree_size = $1")
                .bind(head.tree_size as i64)
                .execute(&mut *conn)
                .await?;
            published += 1;
        }
        Ok(published)
    }

    /// Appends everything there is and signs a head of it (tests, benchmarks,
    /// `replay-tools`): no lock, the size compare-and-set keeps it exact.
    pub async fn catch_up(&self) -> Result<Step, AuditError> {
        let mut conn = self.pool.acquire().await?;
        let mut cursor = self.cursor(&mut conn).await?;
        let mut total = 0;
        loop {
            let step = self.step(&mut conn, &mut cursor, false).await?;
            total += step.appended;
            if step.appended == 0 {
                let last = self.step(&mut conn, &mut cursor, true).await?;
                self.publish(&mut conn).await?;
                return Ok(Step {
                    appended: total,
                    ..last
                });
            }
        }
    }

    /// Runs until `shutdown`: takes the lock (standing by while another process has
    /// it), then follows the store, woken by its `NOTIFY`. On an error the connection
    /// (and the lock) is dropped and everything starts again from the stored tree.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut listener = listen(&self.pool).await;
        loop {
            let Some(mut conn) = self.lock(&mut shutdown).await else {
                return;
            };
            let result = async {
                let mut cursor = self.cursor(&mut conn).await?;
                loop {
                    loop {
                        let step = self.step(&mut conn, &mut cursor, false).await?;
                        if step.appended < self.config.batch as u64 {
                            break;
                        }
                    }
                    if let Err(error) = self.publish(&mut conn).await {
                        tracing::warn!(%error, "cannot publish tree heads yet; retrying");
                    }
                    let wake = async {
                        match listener.as_mut() {
                            Some(l) => {
                                let _ = tokio::time::timeout(FALLBACK_WAKE.min(self.config.head_interval), l.recv()).await;
                            }
                            None => tokio::time::sleep(FALLBACK_WAKE.min(self.config.head_interval)).await,
                        }
                    };
                    tokio::select! {
                        () = wake => {}
                        changed = shutdown.changed() => if changed.is_err() { return Ok::<(), AuditError>(()) },
                    }
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                }
            }
            .await;
            match result {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(%error, "audit signer failed; starting again from the stored tree");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// The signer's advisory lock, on a connection that lives as long as it is held.
    pub async fn lock(&self, shutdown: &mut watch::Receiver<bool>) -> Option<PgConnection> {
        let options = self.pool.connect_options();
        let mut announced = false;
        loop {
            let attempt = async {
                let mut conn = PgConnection::connect_with(&options).await?;
                let held: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('nebengjek.audit', 0))")
                        .fetch_one(&mut conn)
                        .await?;
                Ok::<_, sqlx::Error>(held.then_some(conn))
            };
            match attempt.await {
                Ok(Some(conn)) => return Some(conn),
                Ok(None) if !announced => {
                    tracing::info!("another process signs the audit log; standing by");
                    announced = true;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot take the audit lock; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                changed = shutdown.changed() => if changed.is_err() { return None },
            }
            if *shutdown.borrow() {
                return None;
            }
        }
    }
}

/// Kills the transaction's own backend, as a crash of the signer's connection would.
async fn kill(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> AuditError {
    let _ = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&mut **tx)
        .await;
    AuditError::Injected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pkcs8_pem() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let pem = signing_key_pem(&key);
        assert_eq!(parse_signing_key(&pem).unwrap().to_bytes(), key.to_bytes());
        assert!(parse_signing_key("hello").is_err());
        assert!(parse_signing_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }

    #[test]
    fn a_development_key_is_made_once() {
        let dir = std::env::temp_dir().join(format!("nb-audit-key-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join("key.pem");
        let first = read_or_create_signing_key(&path).unwrap();
        let second = read_or_create_signing_key(&path).unwrap();
        assert_eq!(first.to_bytes(), second.to_bytes());
        let _ = std::fs::remove_dir_all(dir);
    }
}
