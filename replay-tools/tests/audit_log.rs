//! SPEC.md §5 guarantee 8 ("Provable history"), played by an insider with SQL access:
//! a receipt (a signed tree head saved by an auditor) keeps proving that the events it
//! covers are all there, unchanged and in order, where the per-aggregate chain does not.
//! Also the signer: killed mid-batch, or two at once, it leaves exactly one tree, every
//! head matching the events.

#[path = "../../projections/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use domain::chain::{event_hash_text, HashedFields, GENESIS};
use domain::merkle::{self, leaf_hash, Frontier, NodeId, SignedTreeHead};
use ed25519_dalek::SigningKey;
use projections::audit_log::{AuditConfig, Fault, Signer};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sqlx::PgPool;
use support::{drive, world, Ending, World};
use uuid::Uuid;

const KEY: [u8; 32] = [42u8; 32];

fn key() -> SigningKey {
    SigningKey::from_bytes(&KEY)
}

async fn rides(w: &World, seed: u64, n: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..n {
        let ending = [Ending::Completed, Ending::Cancelled, Ending::DeclinedThenPaid][i % 3];
        drive(w, &mut rng, ending).await;
    }
}

async fn signer(pool: &PgPool, batch: i64) -> Signer {
    Signer::new(
        pool.clone(),
        None,
        key(),
        AuditConfig {
            batch,
            head_interval: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await
    .expect("signer")
}

fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://postgres@{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

fn key_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("nb-audit-test-key-{}.pem", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, projections::audit_log::signing_key_pem(&key())).expect("key file");
    }
    path
}

/// Runs the real binary; returns (exit code, stdout, stderr).
fn cli(pool: &PgPool, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replay-tools"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env("AUDIT_SIGNING_KEY_FILE", key_file())
        .output()
        .expect("run replay-tools");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `audit tree-head` saved to a file, as an auditor keeps it.
fn save_receipt(pool: &PgPool) -> (std::path::PathBuf, SignedTreeHead) {
    let (code, out, err) = cli(pool, &["audit", "tree-head"]);
    assert_eq!(code, 0, "{out}{err}");
    let head: SignedTreeHead = serde_json::from_str(&out).expect("a signed tree head");
    let path = std::env::temp_dir().join(format!("receipt-{}.json", Uuid::new_v4().simple()));
    std::fs::write(&path, &out).expect("receipt");
    (path, head)
}

fn verify_receipt(pool: &PgPool, receipt: &std::path::Path) -> (i32, String, String) {
    cli(
        pool,
        &["audit", "verify", "--receipt", receipt.to_str().expect("path")],
    )
}

/// position, aggregate_type, sequence, event_type, event_version, payload, metadata,
/// hash_version.
type EventText = (i64, String, i64, String, i32, String, String, i16);

/// What an insider runs after editing an event: recompute the aggregate's chain and
/// its recorded head, so that the per-aggregate check passes again.
async fn recompute_chain(pool: &PgPool, aggregate: Uuid) {
    let rows: Vec<EventText> = sqlx::query_as(
        "SELECT position, aggregate_type, sequence, event_type, event_version, payload::text, metadata::text, \
         hash_version FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(aggregate)
    .fetch_all(pool)
    .await
    .expect("events");
    let mut prev = GENESIS.to_vec();
    let id = aggregate.to_string();
    for (position, t, sequence, event_type, event_version, payload, metadata, version) in rows {
        let hash = event_hash_text(
            version,
            &prev,
            &HashedFields::<str> {
                aggregate_type: &t,
                aggregate_id: &id,
                sequence,
                event_type: &event_type,
                event_version,
                payload: &payload,
                metadata: &metadata,
            },
        )
        .expect("hash");
        sqlx::query("UPDATE events SET hash = $2 WHERE position = $1")
            .bind(position)
            .bind(hash.as_slice())
            .execute(pool)
            .await
            .expect("rehash");
        prev = hash.to_vec();
    }
    sqlx::query("UPDATE streams SET head_hash = $2 WHERE aggregate_id = $1")
        .bind(aggregate)
        .bind(&prev)
        .execute(pool)
        .await
        .expect("head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_log_passes_and_a_receipt_from_before_an_append_still_does() {
    let w = world().await;
    rides(&w, 1, 6).await;
    let s = signer(&w.pool, 1000).await;
    s.catch_up().await.expect("sign");
    let (old_receipt, old) = save_receipt(&w.pool);
    let (code, out, err) = verify_receipt(&w.pool, &old_receipt);
    assert_eq!(code, 0, "{out}{err}");

    // A legitimate append, signed: the old receipt still holds, and the log proves it.
    rides(&w, 2, 3).await;
    s.catch_up().await.expect("sign");
    let (new_receipt, new) = save_receipt(&w.pool);
    assert!(new.tree_size > old.tree_size);
    for receipt in [&old_receipt, &new_receipt] {
        let (code, out, err) = verify_receipt(&w.pool, receipt);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, _) = cli(
        &w.pool,
        &["audit", "prove-consistency", "--from", &old.tree_size.to_string()],
    );
    assert_eq!(code, 0);
    let proof: merkle::ConsistencyProof = serde_json::from_str(&out).expect("proof");
    proof
        .verify(&old.root().unwrap(), &new.root().unwrap())
        .expect("consistent");
    let (code, out, _) = cli(&w.pool, &["audit", "prove-inclusion", "--position", "3"]);
    assert_eq!(code, 0);
    let proof: merkle::InclusionProof = serde_json::from_str(&out).expect("proof");
    assert_eq!((proof.leaf_index, proof.tree_size), (2, new.tree_size));
    proof.verify(&new.root().unwrap()).expect("included");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT hash FROM events WHERE position = 3")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(proof.leaf_hash, merkle::to_hex(&leaf_hash(&stored)));

    // The public key and the heads agree; a disputed ride's events prove themselves.
    let (_, out, _) = cli(&w.pool, &["audit", "public-key"]);
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let public = merkle::public_key_from_base64(printed["public_key"].as_str().unwrap()).unwrap();
    assert_eq!(printed["key_id"], new.key_id);
    new.verify(&public).expect("signed");
    let ride: Uuid =
        sqlx::query_scalar("SELECT aggregate_id FROM events WHERE aggregate_type = 'ride' LIMIT 1")
            .fetch_one(&w.pool)
            .await
            .unwrap();
    let (code, out, err) = cli(&w.pool, &["billing", "ride", &ride.to_string(), "--with-proof"]);
    assert!(code == 0 || code == 1, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    let head: SignedTreeHead = serde_json::from_value(doc["tree_head"].clone()).unwrap();
    head.verify(&public).unwrap();
    let events = doc["events"].as_array().unwrap();
    assert!(!events.is_empty());
    for e in events {
        let p: merkle::InclusionProof = serde_json::from_value(e["inclusion"].clone()).unwrap();
        p.verify(&head.root().unwrap())
            .expect("each event is in the signed log");
        let hash = hex_bytes(e["hash"].as_str().unwrap());
        assert_eq!(p.leaf_hash, merkle::to_hex(&leaf_hash(&hash)));
    }

    // Bad input: exit 2 with a message, never a panic.
    for args in [
        &["audit", "prove-inclusion", "--position", "0"][..],
        &["audit", "prove-inclusion", "--position", "999999"],
        &["audit", "prove-consistency", "--from", "0"],
        &["audit", "tree-head", "--size", "999999"],
        &["audit", "verify", "--receipt", "/nonexistent.json"],
    ] {
        let (code, out, err) = cli(&w.pool, args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.starts_with("error:"), "{err}");
    }
    let forged = std::env::temp_dir().join(format!("forged-{}.json", Uuid::new_v4().simple()));
    let mut f = new.clone();
    f.root_hash = merkle::to_hex(&[0u8; 32]);
    std::fs::write(&forged, serde_json::to_string(&f).unwrap()).unwrap();
    let (code, _, err) = verify_receipt(&w.pool, &forged);
    assert_eq!(code, 1, "a receipt with a bad signature fails: {err}");
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// A signed world and a receipt of it.
async fn signed_world() -> (World, std::path::PathBuf, SignedTreeHead) {
    let w = world().await;
    rides(&w, 3, 6).await;
    signer(&w.pool, 1000).await.catch_up().await.expect("sign");
    let (receipt, head) = save_receipt(&w.pool);
    let (code, out, err) = verify_receipt(&w.pool, &receipt);
    assert_eq!(code, 0, "{out}{err}");
    (w, receipt, head)
}

fn assert_fails_naming(receipt: &std::path::Path, (code, out, err): (i32, String, String)) {
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&receipt.display().to_string()),
        "names the receipt: {err}"
    );
    assert!(
        err.contains("the first signed tree head that no longer matches: tree_size"),
        "names the first head: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_event_with_its_chain_recomputed_passes_verify_but_not_the_receipt() {
    let (w, receipt, _) = signed_world().await;
    let (ride, position): (Uuid, i64) = sqlx::query_as(
        "SELECT aggregate_id, position FROM events WHERE aggregate_type = 'ride' AND sequence = 1 ORDER BY position LIMIT 1",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE events SET payload = payload || '{\"note\": \"rewritten\"}' WHERE position = $1")
        .bind(position)
        .execute(&w.pool)
        .await
        .unwrap();
    recompute_chain(&w.pool, ride).await;
    // The old weakness: the chains alone cannot tell.
    let (breaks, _) = replay_tools::verify_chains(&w.pool).await.unwrap();
    assert!(breaks.is_empty(), "{breaks:?}");
    let result = verify_receipt(&w.pool, &receipt);
    assert!(
        result.1.contains("no longer give the receipt's root"),
        "{result:?}"
    );
    assert_fails_naming(&receipt, result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_newest_events_fails_the_receipt() {
    let (w, receipt, head) = signed_world().await;
    sqlx::query("DELETE FROM events WHERE position > $1")
        .bind(head.tree_size as i64 - 3)
        .execute(&w.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE event_store SET head_position = $1")
        .bind(head.tree_size as i64 - 3)
        .execute(&w.pool)
        .await
        .unwrap();
    let result = verify_receipt(&w.pool, &receipt);
    assert!(result.1.contains("deleted"), "{result:?}");
    assert_fails_naming(&receipt, result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_two_positions_fails_the_receipt() {
    let (w, receipt, _) = signed_world().await;
    // Two events of different aggregates trade places: each chain is still in order.
    let (a, b): (i64, i64) = sqlx::query_as(
        "SELECT x.position, y.position FROM events x JOIN events y ON y.position = x.position + 1 \
         WHERE x.aggregate_id <> y.aggregate_id ORDER BY x.position LIMIT 1",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    let mut tx = w.pool.begin().await.unwrap();
    for (from, to) in [(a, -1), (b, a), (-1, b)] {
        sqlx::query("UPDATE events SET position = $2 WHERE position = $1")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let (breaks, _) = replay_tools::verify_chains(&w.pool).await.unwrap();
    assert!(breaks.is_empty(), "the chains cannot see a reorder: {breaks:?}");
    assert_fails_naming(&receipt, verify_receipt(&w.pool, &receipt));
}

/// The stored tree is exactly the tree of the events, and every head matches it.
async fn assert_tree_exact(pool: &PgPool) {
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM events ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap();
    let size = projections::audit_log::tree_size(pool).await.unwrap();
    assert_eq!(size as usize, hashes.len(), "every event is in the tree, once");
    let mut frontier = Frontier::new();
    let mut expected: HashMap<NodeId, [u8; 32]> = HashMap::new();
    let mut roots = vec![merkle::empty_root()];
    for h in &hashes {
        frontier.push(leaf_hash(h), |id, hash| {
            expected.insert(id, *hash);
        });
        roots.push(frontier.root());
    }
    let stored: Vec<(i16, i64, Vec<u8>)> = sqlx::query_as("SELECT level, idx, hash FROM audit_tree_nodes")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), expected.len(), "no node missing or extra");
    for (level, idx, hash) in stored {
        let id = NodeId {
            level: level as u8,
            index: idx as u64,
        };
        assert_eq!(expected.get(&id).map(|h| h.to_vec()), Some(hash), "{id:?}");
    }
    let heads = projections::audit_log::stored_heads(pool).await.unwrap();
    assert!(!heads.is_empty());
    let public = key().verifying_key();
    for head in heads {
        head.verify(&public).expect("signed");
        assert_eq!(
            head.root().unwrap(),
            roots[head.tree_size as usize],
            "head {}",
            head.tree_size
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_killed_mid_batch_leaves_no_gap_and_no_double_head() {
    let w = world().await;
    rides(&w, 4, 6).await;
    let s = signer(&w.pool, 7).await;
    // Killed after writing a batch's nodes: nothing of the batch stays.
    let mut conn = s
        .lock(&mut tokio::sync::watch::channel(false).1)
        .await
        .expect("lock");
    let mut cursor = s.cursor(&mut conn).await.unwrap();
    s.step(&mut conn, &mut cursor, true).await.expect("first batch");
    s.inject(Fault::AfterNodes);
    assert!(s.step(&mut conn, &mut cursor, true).await.is_err());
    drop(conn);
    assert_eq!(projections::audit_log::tree_size(&w.pool).await.unwrap(), 7);
    let nodes: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_tree_nodes")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(
        nodes,
        7 + 3 + 1,
        "the 7 leaves of the first batch and their parents only"
    );
    // Killed after writing a head: neither the head nor its batch stays.
    let mut conn = s
        .lock(&mut tokio::sync::watch::channel(false).1)
        .await
        .expect("lock again");
    let mut cursor = s.cursor(&mut conn).await.unwrap();
    s.inject(Fault::AfterHead);
    assert!(s.step(&mut conn, &mut cursor, true).await.is_err());
    drop(conn);
    assert_eq!(projections::audit_log::tree_size(&w.pool).await.unwrap(), 7);
    let heads: Vec<i64> = sqlx::query_scalar("SELECT tree_size FROM tree_heads ORDER BY 1")
        .fetch_all(&w.pool)
        .await
        .unwrap();
    assert_eq!(heads, vec![7]);

    // The running signer, aborted at moments while rides go on, then left to finish.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for round in 0..4u64 {
        let task = tokio::spawn(signer(&w.pool, 5).await.run(stopped.clone()));
        rides(&w, 10 + round, 2).await;
        tokio::time::sleep(Duration::from_millis(30 * round)).await;
        task.abort();
        let _ = task.await;
    }
    let task = tokio::spawn(signer(&w.pool, 5).await.run(stopped.clone()));
    let head = support::head(&w.pool).await as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while projections::audit_log::stored_head(&w.pool, None)
        .await
        .unwrap()
        .map(|h| h.tree_size)
        != Some(head)
    {
        assert!(std::time::Instant::now() < deadline, "the signer caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let _ = task.await;
    assert_tree_exact(&w.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_signers_keep_one_tree() {
    let w = world().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let a = tokio::spawn(signer(&w.pool, 3).await.run(stopped.clone()));
    let b = tokio::spawn(signer(&w.pool, 3).await.run(stopped.clone()));
    rides(&w, 5, 6).await;
    // And two writers without the lock at all: the size compare-and-set keeps it exact.
    let (x, y) = (signer(&w.pool, 2).await, signer(&w.pool, 3).await);
    let (rx, ry) = tokio::join!(x.catch_up(), y.catch_up());
    rx.expect("x");
    ry.expect("y");
    let _ = stop.send(true);
    let _ = tokio::join!(a, b);
    assert_tree_exact(&w.pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_are_published_on_jetstream() {
    let w = world().await;
    rides(&w, 6, 2).await;
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let nats = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("NATS must be running at {url}: {e}"));
    let tag = Uuid::new_v4().simple().to_string();
    let config = AuditConfig {
        stream: format!("AUDIT_{tag}"),
        subject: format!("audit_{tag}.tree_head"),
        ..Default::default()
    };
    let s = Signer::new(w.pool.clone(), Some(nats.clone()), key(), config.clone())
        .await
        .expect("signer");
    s.catch_up().await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut stream = js.get_stream(&config.stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let message = stream.get_raw_message(last).await.unwrap();
    let head: SignedTreeHead = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(
        Some(head.clone()),
        projections::audit_log::stored_head(&w.pool, None).await.unwrap()
    );
    head.verify(&key().verifying_key()).unwrap();
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM tree_heads WHERE NOT published")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(unpublished, 0);
    let _ = js.delete_stream(&config.stream).await;
}

/// Runs `scripts/audit_check.py` (Python's hashlib and `cryptography`, none of our
/// code): (exit code, stdout).
fn python(args: &[&str]) -> (i32, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/audit_check.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 must be installed to check the auditors' script");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditors_script_recomputes_the_root_and_checks_the_signature() {
    let (w, receipt, head) = signed_world().await;
    let dir = std::env::temp_dir().join(format!("nb-audit-py-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let hashes: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM events WHERE position <= $1 ORDER BY position")
            .bind(head.tree_size as i64)
            .fetch_all(&w.pool)
            .await
            .unwrap();
    let lines: String = hashes.iter().map(|h| merkle::to_hex(h) + "\n").collect();
    let hashes_file = dir.join("hashes.txt");
    std::fs::write(&hashes_file, lines).unwrap();
    let (code, out) = python(&["root", hashes_file.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, head.root_hash.as_str()));

    let (_, out, _) = cli(&w.pool, &["audit", "public-key"]);
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let public = printed["public_key"].as_str().unwrap().to_owned();
    let (code, out) = python(&["head", receipt.to_str().unwrap(), &public]);
    assert_eq!(code, 0, "{out}");
    let mut forged = head.clone();
    forged.tree_size += 1;
    let forged_file = dir.join("forged.json");
    std::fs::write(&forged_file, serde_json::to_string(&forged).unwrap()).unwrap();
    let (code, out) = python(&["head", forged_file.to_str().unwrap(), &public]);
    assert_eq!(code, 1, "{out}");

    let (_, out, _) = cli(&w.pool, &["audit", "prove-inclusion", "--position", "5"]);
    let proof_file = dir.join("inclusion.json");
    std::fs::write(&proof_file, &out).unwrap();
    let (code, out) = python(&["inclusion", proof_file.to_str().unwrap(), &head.root_hash]);
    assert_eq!(code, 0, "{out}");
    let (code, _) = python(&[
        "inclusion",
        proof_file.to_str().unwrap(),
        &merkle::to_hex(&[1u8; 32]),
    ]);
    assert_eq!(code, 1);

    let first = head.tree_size / 2;
    let first_root = merkle::to_hex(&projections::audit_log::root_at(&w.pool, first).await.unwrap());
    let (_, out, _) = cli(
        &w.pool,
        &["audit", "prove-consistency", "--from", &first.to_string()],
    );
    let proof_file = dir.join("consistency.json");
    std::fs::write(&proof_file, &out).unwrap();
    let (code, out) = python(&[
        "consistency",
        proof_file.to_str().unwrap(),
        &first_root,
        &head.root_hash,
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, _) = python(&[
        "consistency",
        proof_file.to_str().unwrap(),
        &head.root_hash,
        &head.root_hash,
    ]);
    assert_eq!(code, 1);
    let _ = std::fs::remove_dir_all(dir);
}
