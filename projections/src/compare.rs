//! Comparing rows folded from the events with the live rides tables, fast.
//!
//! `verify` has to look at every live row. Decoding 850k rows column by column into
//! Rust values and diffing them field by field costs more than reading the events; so
//! the comparison runs in two passes (ADR 0006):
//!
//! 1. **Digests.** Each folded row is rendered as the COPY text line PostgreSQL would
//!    print for it ([`crate::copy_text`]) and digested with a keyed hash (SipHash with
//!    keys drawn at random for this run, so a row cannot be forged to collide). The
//!    live tables are streamed with `COPY ... TO STDOUT` and every line's digest is
//!    checked against the folded row with the same key. Equal bytes mean an equal row.
//! 2. **Typed diff.** Every ride with a row that differs, is missing or is unexpected
//!    is read back typed ([`read_live`]) and diffed field by field ([`diff`]), which
//!    is what names the difference. A line that differs only in how a value is printed
//!    (a float with an exponent, say) passes here: it is not a difference.
//!
//! Both passes read inside one `REPEATABLE READ` transaction: one snapshot.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use futures::TryStreamExt;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::copy_text::{CopyRow, SESSION_SETTINGS};
use crate::rows::{diff, read_live, RideFold, RowDiff};

/// A folded row as the first pass knows it: its ride and its line's digest.
struct Expect {
    ride: Uuid,
    digest: u64,
}

/// The first pass over one table.
struct Table<'a> {
    name: &'static str,
    columns: &'static str,
    /// The field (0-based) holding the row's ride id.
    ride_field: usize,
    expected: HashMap<Uuid, Expect>,
    hasher: &'a RandomState,
}

impl<'a> Table<'a> {
    /// The first pass over `T`'s table: each of `rows` digested by its key.
    fn new<'r, T: CopyRow + 'r>(rows: impl Iterator<Item = &'r T>, hasher: &'a RandomState) -> Self {
        let mut expected = HashMap::with_capacity(rows.size_hint().1.unwrap_or(0));
        let mut line = String::with_capacity(512);
        for row in rows {
            line.clear();
            row.write_copy(&mut line);
            expected.insert(
                row.key(),
                Expect {
                    ride: row.ride(),
                    digest: hasher.hash_one(line.as_bytes()),
                },
            );
        }
        Table {
            name: T::TABLE,
            columns: T::COLUMNS,
            ride_field: T::RIDE_FIELD,
            expected,
            hasher,
        }
    }

    /// Checks one live line (with its newline) against the folded row of its key;
    /// adds the ride to `suspects` unless the two are the same bytes.
    fn check(&mut self, line: &[u8], suspects: &mut HashSet<Uuid>, unreadable: &mut Vec<RowDiff>) {
        let field = |n: usize| {
            let start = match n {
                0 => 0,
                n => memchr::memchr_iter(b'\t', line).nth(n - 1)? + 1,
            };
            let rest = &line[start..];
            let end = memchr::memchr2(b'\t', b'\n', rest).unwrap_or(rest.len());
            Uuid::try_parse_ascii(&rest[..end]).ok()
        };
        let (Some(key), Some(ride)) = (field(0), field(self.ride_field)) else {
            unreadable.push(RowDiff {
                table: self.name,
                ride_id: Uuid::nil(),
                key: Uuid::nil(),
                what: format!(
                    "a live row without a readable id: {}",
                    String::from_utf8_lossy(line).trim_end()
                ),
            });
            return;
        };
        match self.expected.remove(&key) {
            Some(e) if e.digest == self.hasher.hash_one(line) => {}
            Some(e) => {
                suspects.insert(e.ride);
                suspects.insert(ride);
            }
            None => {
                suspects.insert(ride);
            }
        }
    }

    /// Streams the live table (the rides in `filter`) through [`Table::check`];
    /// returns the lines read.
    async fn scan(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
        filter: &str,
        suspects: &mut HashSet<Uuid>,
        unreadable: &mut Vec<RowDiff>,
    ) -> Result<u64, sqlx::Error> {
        let sql = if filter.is_empty() {
            format!("COPY {} ({}) TO STDOUT", self.name, self.columns)
        } else {
            format!(
                "COPY (SELECT {} FROM {}{filter}) TO STDOUT",
                self.columns, self.name
            )
        };
        let mut stream = tx.copy_out_raw(&sql).await?;
        // PostgreSQL sends a row per message; lines are still split here, not assumed.
        let mut carry: Vec<u8> = Vec::new();
        let mut lines = 0;
        while let Some(chunk) = stream.try_next().await? {
            let mut data: &[u8] = &chunk;
            while let Some(end) = memchr::memchr(b'\n', data) {
                let (line, rest) = data.split_at(end + 1);
                lines += 1;
                if carry.is_empty() {
                    self.check(line, suspects, unreadable);
                } else {
                    carry.extend_from_slice(line);
                    let whole = std::mem::take(&mut carry);
                    self.check(&whole, suspects, unreadable);
                }
                data = rest;
            }
            carry.extend_from_slice(data);
        }
        if !carry.is_empty() {
            lines += 1;
            self.check(&carry, suspects, unreadable);
        }
        // Folded rows no live line matched are missing.
        suspects.extend(self.expected.drain().map(|(_, e)| e.ride));
        Ok(lines)
    }
}

/// What [`compare_live`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Comparison {
    /// Every difference, as [`diff`] of the whole tables would list it.
    pub diffs: Vec<RowDiff>,
    /// Live rows streamed and checked by digest.
    pub rows: u64,
    /// Rides read back typed because a row of theirs did not match its digest.
    pub rechecked_rides: usize,
}

/// Compares `folded` (what the events say) with the live tables; with `only`, the
/// rows of those rides.
pub async fn compare_live(
    pool: &PgPool,
    folded: &RideFold,
    only: Option<&[Uuid]>,
) -> Result<Comparison, sqlx::Error> {
    let hasher = RandomState::new();
    let wanted: Option<HashSet<Uuid>> = only.map(|ids| ids.iter().copied().collect());
    let wanted = |ride: &Uuid| wanted.as_ref().is_none_or(|w| w.contains(ride));
    let mut tables = [
        Table::new(folded.rides.values().filter(|r| wanted(&r.ride_id)), &hasher),
        Table::new(folded.ledger.iter().filter(|r| wanted(&r.ride_id)), &hasher),
        Table::new(folded.payments.values().filter(|r| wanted(&r.ride_id)), &hasher),
    ];
    // Our own uuids, printed by us: nothing in the literal comes from outside.
    let filter = match only {
        None => String::new(),
        Some(ids) => {
            let list: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            format!(" WHERE ride_id = ANY('{{{}}}'::uuid[])", list.join(","))
        }
    };

    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    for setting in SESSION_SETTINGS {
        sqlx::query(setting).execute(&mut *tx).await?;
    }
    let mut suspects = HashSet::new();
    let mut found = Vec::new();
    let mut rows = 0;
    for table in &mut tables {
        rows += table.scan(&mut tx, &filter, &mut suspects, &mut found).await?;
    }
    if !suspects.is_empty() {
        let ids: Vec<Uuid> = suspects.iter().copied().collect();
        let live = read_live(&mut tx, Some(&ids)).await?;
        let suspected = RideFold {
            rides: folded
                .rides
                .iter()
                .filter(|(_, r)| suspects.contains(&r.ride_id))
                .map(|(k, r)| (*k, r.clone()))
                .collect(),
            ledger: folded
                .ledger
                .iter()
                .filter(|r| suspects.contains(&r.ride_id))
                .cloned()
                .collect(),
            payments: folded
                .payments
                .iter()
                .filter(|(_, p)| suspects.contains(&p.ride_id))
                .map(|(k, p)| (*k, p.clone()))
                .collect(),
        };
        found.extend(diff(&suspected, &live));
    }
    tx.commit().await?;
    Ok(Comparison {
        diffs: found,
        rows,
        rechecked_rides: suspects.len(),
    })
}
