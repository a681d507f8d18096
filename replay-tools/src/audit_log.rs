//! `audit verify --receipt`: does the log still extend a signed tree head an auditor
//! kept? Recomputed from the events themselves, never from the stored tree:
//!
//! - the receipt's signature is checked with the public key the auditor holds;
//! - the events are read in position order up to the receipt's size: positions must run
//!   1, 2, 3 … without a hole, each event's hash must be its chain hash (its own
//!   `hash_version`, its aggregate's previous hash), and the Merkle root of their hashes
//!   must be the receipt's root. An insider who rewrites an event and recomputes its
//!   aggregate's chain and head passes the chain check but changes the root; deleting
//!   the newest events leaves fewer leaves than the receipt covers; swapping two
//!   positions reorders the leaves.
//! - along the way every stored signed head (up to the log's end) is compared with the
//!   root recomputed at its size, so a failure names the first one that no longer
//!   matches: where the history was changed.

use std::collections::HashMap;

use domain::chain::{event_hash_text, HashedFields, GENESIS};
use domain::merkle::{leaf_hash, Frontier, SignedTreeHead};
use ed25519_dalek::VerifyingKey;
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// What `audit verify --receipt` found.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptReport {
    /// The receipt's file (as given).
    pub receipt: String,
    /// Leaves the receipt covers.
    pub tree_size: u64,
    /// Whether the log still extends the receipt.
    pub ok: bool,
    /// Events read and checked.
    pub events_checked: u64,
    /// Every problem, in the order found.
    pub problems: Vec<String>,
    /// The first stored signed head that no longer matches the events (or is not
    /// validly signed), if any.
    pub first_mismatching_head: Option<SignedTreeHead>,
}

/// Checks `receipt` against the events (see the module doc).
pub async fn verify_receipt(
    pool: &PgPool,
    receipt_name: &str,
    receipt: &SignedTreeHead,
    key: &VerifyingKey,
) -> Result<ReceiptReport, anyhow::Error> {
    let mut report = ReceiptReport {
        receipt: receipt_name.to_owned(),
        tree_size: receipt.tree_size,
        ok: false,
        events_checked: 0,
        problems: Vec::new(),
        first_mismatching_head: None,
    };
    if let Err(error) = receipt.verify(key) {
        report
            .problems
            .push(format!("the receipt itself does not verify: {error}"));
    }
    let heads = projections::audit_log::stored_heads(pool).await?;
    let mut heads = heads.into_iter().peekable();
    let mut frontier = Frontier::new();
    let mut chains: HashMap<(String, Uuid), (Vec<u8>, i64)> = HashMap::new();
    let mut receipt_checked = receipt.tree_size == 0;
    if receipt.tree_size == 0 && receipt.root_hash != domain::merkle::to_hex(&domain::merkle::empty_root()) {
        report
            .problems
            .push("the receipt's root is not the empty tree's".into());
    }
    {
        let mut rows = sqlx::query(
            "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
             payload::text, metadata::text, hash, hash_version FROM events ORDER BY position",
        )
        .fetch(pool);
        while let Some(row) = rows.try_next().await? {
            use sqlx::Row as _;
            let position: i64 = row.try_get(0)?;
            let aggregate_type: &str = row.try_get(1)?;
            let aggregate_id: Uuid = row.try_get(2)?;
            let sequence: i64 = row.try_get(3)?;
            let event_type: &str = row.try_get(4)?;
            let hash: &[u8] = row.try_get(8)?;
            let expected = frontier.size() + 1;
            let covered = expected <= receipt.tree_size;
            if position as u64 != expected {
                if covered {
                    report.problems.push(format!(
                        "position {expected} is missing (the next event is at {position}): events deleted or reordered"
                    ));
                }
                break;
            }
            let chain = chains
                .entry((aggregate_type.to_owned(), aggregate_id))
                .or_insert_with(|| (GENESIS.to_vec(), 1));
            let id = aggregate_id.hyphenated().to_string();
            let computed = event_hash_text(
                row.try_get(9)?,
                &chain.0,
                &HashedFields::<str> {
                    aggregate_type,
                    aggregate_id: &id,
                    sequence,
                    event_type,
                    event_version: row.try_get(5)?,
                    payload: row.try_get(6)?,
                    metadata: row.try_get(7)?,
                },
            );
            if covered {
                match computed {
                    Ok(c) if c.as_slice() == hash => {}
                    Ok(_) => report.problems.push(format!(
                        "the event at position {position} ({aggregate_type} {aggregate_id} #{sequence}) does not match its hash"
                    )),
                    Err(e) => report
                        .problems
                        .push(format!("the event at position {position} cannot be hashed: {e}")),
                }
                if sequence != chain.1 {
                    report.problems.push(format!(
                        "the event at position {position} is #{sequence} of {aggregate_type} {aggregate_id}, #{} was expected",
                        chain.1
                    ));
                }
                report.events_checked += 1;
            }
            chain.0 = hash.to_vec();
            chain.1 = sequence + 1;
            frontier.push(leaf_hash(hash), |_, _| {});
            let size = frontier.size();
            if size == receipt.tree_size {
                receipt_checked = true;
                if domain::merkle::to_hex(&frontier.root()) != receipt.root_hash {
                    report.problems.push(format!(
                        "the events up to position {size} no longer give the receipt's root {}",
                        receipt.root_hash
                    ));
                }
            }
            while heads.peek().is_some_and(|h| h.tree_size <= size) {
                let Some(head) = heads.next() else { break };
                let bad = head.tree_size < size
                    || head.verify(key).is_err()
                    || domain::merkle::to_hex(&frontier.root()) != head.root_hash;
                if bad && report.first_mismatching_head.is_none() {
                    report.first_mismatching_head = Some(head);
                }
            }
            if size >= receipt.tree_size && heads.peek().is_none() {
                break;
            }
        }
    }
    if !receipt_checked {
        report.problems.push(format!(
            "the log has {} events in order, the receipt covers {}: events deleted at the end or moved",
            frontier.size(),
            receipt.tree_size
        ));
    }
    if let Some(head) = heads.next() {
        if report.first_mismatching_head.is_none() && head.tree_size > frontier.size() {
            report.first_mismatching_head = Some(head);
        }
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}
