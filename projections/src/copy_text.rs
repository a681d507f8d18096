//! The rides read-model rows as PostgreSQL's `COPY ... TO STDOUT` text prints them.
//!
//! One rendering serves both directions: a rebuild writes these bytes with
//! `COPY ... FROM STDIN` ([`crate::rows::copy_rows`]), and `verify` compares the live
//! tables' `COPY ... TO STDOUT` output with them ([`crate::compare`]). For the bytes to
//! be what PostgreSQL prints, the reading session sets [`SESSION_SETTINGS`]; a value
//! PostgreSQL would print differently (a float it writes with an exponent, a year
//! outside 1..=9999, a control character in a text) only makes the fast comparison
//! fall back to a typed one for that ride, never hides a difference.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};
use uuid::Uuid;

use crate::rows::{LedgerRow, PaymentRow, RideRow};

/// `SET LOCAL`s that make PostgreSQL print values the way this module renders them.
pub const SESSION_SETTINGS: &[&str] = &[
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, MDY'",
    "SET LOCAL extra_float_digits = 1",
    "SET LOCAL bytea_output = 'hex'",
];

/// A row of one of the rides read models, as a COPY text line.
pub trait CopyRow {
    /// Its table.
    const TABLE: &'static str;
    /// Its columns, in [`CopyRow::write_copy`] order.
    const COLUMNS: &'static str;
    /// The field (0-based) of the line that holds the row's ride id.
    const RIDE_FIELD: usize;
    /// The row's primary key.
    fn key(&self) -> Uuid;
    /// The ride it belongs to.
    fn ride(&self) -> Uuid;
    /// Appends the row as a COPY text line in [`CopyRow::COLUMNS`] order.
    fn write_copy(&self, out: &mut String);
}

/// `COPY <table> (<columns>) FROM STDIN` for rows of `T`.
pub fn copy_in_statement<T: CopyRow>() -> String {
    format!("COPY {} ({}) FROM STDIN", T::TABLE, T::COLUMNS)
}

/// Appends one row's fields, tab-separated; [`Line::end`] closes it.
#[derive(Debug)]
pub struct Line<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Line<'a> {
    /// Starts a row at the end of `out`.
    pub fn new(out: &'a mut String) -> Self {
        Line { out, first: true }
    }

    fn sep(&mut self) -> &mut String {
        if !self.first {
            self.out.push('\t');
        }
        self.first = false;
        self.out
    }

    /// `\N`.
    pub fn null(&mut self) -> &mut Self {
        self.sep().push_str("\\N");
        self
    }

    /// A `uuid`.
    pub fn uuid(&mut self, id: Uuid) -> &mut Self {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.hyphenated().encode_lower(&mut buf);
        self.sep().push_str(text);
        self
    }

    /// A `text`, with backslash, tab, newline and carriage return escaped.
    pub fn text(&mut self, value: &str) -> &mut Self {
        let out = self.sep();
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c => out.push(c),
            }
        }
        self
    }

    /// An integer.
    pub fn int(&mut self, value: i64) -> &mut Self {
        let _ = write!(self.sep(), "{value}");
        self
    }

    /// A `double precision` (shortest round-trip digits, as PostgreSQL ≥ 12 prints).
    pub fn float(&mut self, value: f64) -> &mut Self {
        let _ = write!(self.sep(), "{value}");
        self
    }

    /// A `numeric(_, 3)` from thousandths (metres as kilometres).
    pub fn milli(&mut self, thousandths: i64) -> &mut Self {
        let sign = if thousandths < 0 { "-" } else { "" };
        let v = thousandths.unsigned_abs();
        let _ = write!(self.sep(), "{sign}{}.{:03}", v / 1000, v % 1000);
        self
    }

    /// A `numeric(_, 4)` from ten-thousandths (basis points as a factor).
    pub fn basis_points(&mut self, bps: i32) -> &mut Self {
        let sign = if bps < 0 { "-" } else { "" };
        let v = bps.unsigned_abs();
        let _ = write!(self.sep(), "{sign}{}.{:04}", v / 10_000, v % 10_000);
        self
    }

    /// A `timestamptz` as PostgreSQL prints it in UTC with `DateStyle = ISO`:
    /// `2026-12-02 05:38:58.123456+00`, trailing zeros of the fraction dropped.
    pub fn timestamp(&mut self, t: &DateTime<Utc>) -> &mut Self {
        let out = self.sep();
        let _ = write!(
            out,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        // PostgreSQL keeps microseconds; finer digits are shown so that they differ.
        let nanos = t.nanosecond();
        if nanos != 0 {
            let (mut digits, mut width) = if nanos.is_multiple_of(1000) {
                (nanos / 1000, 6)
            } else {
                (nanos, 9)
            };
            while digits.is_multiple_of(10) {
                digits /= 10;
                width -= 1;
            }
            let _ = write!(out, ".{digits:0width$}");
        }
        out.push_str("+00");
        self
    }

    /// A `bytea` in hex output, its backslash escaped for COPY (`\\x00ff`).
    pub fn bytea(&mut self, bytes: &[u8]) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let out = self.sep();
        out.push_str("\\\\x");
        for b in bytes {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
        self
    }

    /// `Some` through `f`, `None` as `\N`.
    pub fn opt<T>(&mut self, value: Option<T>, f: impl FnOnce(&mut Self, T) -> &mut Self) -> &mut Self {
        match value {
            Some(v) => f(self, v),
            None => self.null(),
        }
    }

    /// Ends the row with a newline.
    pub fn end(&mut self) {
        self.out.push('\n');
    }
}

impl CopyRow for RideRow {
    const TABLE: &'static str = "rides";
    const COLUMNS: &'static str =
        "ride_id, match_id, driver_id, passenger_id, status, pickup_lat, pickup_lon, \
         destination_lat, destination_lon, distance_km, fare, adjusted_fare, admin_fee, driver_payout, \
         adjustment_factor, created_at, started_at, arrived_at, completed_at, cancelled_at, cancelled_by, \
         cancel_reason, last_sequence, last_hash, updated_position";
    const RIDE_FIELD: usize = 0;

    fn key(&self) -> Uuid {
        self.ride_id
    }

    fn ride(&self) -> Uuid {
        self.ride_id
    }

    fn write_copy(&self, out: &mut String) {
        let mut l = Line::new(out);
        l.uuid(self.ride_id)
            .uuid(self.match_id)
            .uuid(self.driver_id)
            .uuid(self.passenger_id)
            .text(&self.status)
            .float(self.pickup_lat)
            .float(self.pickup_lon)
            .float(self.destination_lat)
            .float(self.destination_lon)
            .opt(self.distance_m, Line::milli)
            .opt(self.fare, Line::int)
            .opt(self.adjusted_fare, Line::int)
            .opt(self.admin_fee, Line::int)
            .opt(self.driver_payout, Line::int)
            .opt(self.adjustment_bps, Line::basis_points)
            .timestamp(&self.created_at)
            .opt(self.started_at.as_ref(), Line::timestamp)
            .opt(self.arrived_at.as_ref(), Line::timestamp)
            .opt(self.completed_at.as_ref(), Line::timestamp)
            .opt(self.cancelled_at.as_ref(), Line::timestamp)
            .opt(self.cancelled_by.as_deref(), Line::text)
            .opt(self.cancel_reason.as_deref(), Line::text)
            .int(self.last_sequence)
            .bytea(&self.last_hash)
            .int(self.updated_position)
            .end();
    }
}

impl CopyRow for LedgerRow {
    const TABLE: &'static str = "billing_ledger";
    const COLUMNS: &'static str = "entry_id, ride_id, kind, distance_km, cost, position, recorded_at";
    const RIDE_FIELD: usize = 1;

    fn key(&self) -> Uuid {
        self.entry_id
    }

    fn ride(&self) -> Uuid {
        self.ride_id
    }

    fn write_copy(&self, out: &mut String) {
        Line::new(out)
            .uuid(self.entry_id)
            .uuid(self.ride_id)
            .text(&self.kind)
            .opt(self.distance_m, Line::milli)
            .int(self.cost)
            .int(self.position)
            .timestamp(&self.recorded_at)
            .end();
    }
}

impl CopyRow for PaymentRow {
    const TABLE: &'static str = "payments";
    const COLUMNS: &'static str = "payment_id, ride_id, adjusted_cost, admin_fee, driver_payout, status, \
         attempts, provider_ref, created_at, updated_at";
    const RIDE_FIELD: usize = 1;

    fn key(&self) -> Uuid {
        self.payment_id
    }

    fn ride(&self) -> Uuid {
        self.ride_id
    }

    fn write_copy(&self, out: &mut String) {
        Line::new(out)
            .uuid(self.payment_id)
            .uuid(self.ride_id)
            .int(self.adjusted_cost)
            .int(self.admin_fee)
            .int(self.driver_payout)
            .text(&self.status)
            .int(i64::from(self.attempts))
            .opt(self.provider_ref.as_deref(), Line::text)
            .timestamp(&self.created_at)
            .timestamp(&self.updated_at)
            .end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn line(f: impl FnOnce(&mut Line<'_>)) -> String {
        let mut out = String::new();
        let mut l = Line::new(&mut out);
        f(&mut l);
        l.end();
        out
    }

    #[test]
    fn values_render_as_postgresql_prints_them() {
        let t = Utc.with_ymd_and_hms(2026, 12, 2, 5, 38, 58).unwrap();
        assert_eq!(
            line(|l| {
                l.timestamp(&t)
                    .timestamp(&(t + chrono::TimeDelta::microseconds(123_450)))
                    .milli(1234)
                    .milli(7)
                    .milli(-1500)
                    .basis_points(5700)
                    .basis_points(10_000)
                    .bytea(&[0, 255])
                    .int(-42)
                    .float(-6.2)
                    .float(106.0)
                    .null()
                    .text("a\tb\\c\nd");
            }),
            "2026-12-02 05:38:58+00\t2026-12-02 05:38:58.12345+00\t1.234\t0.007\t-1.500\t0.5700\t1.0000\t\
             \\\\x00ff\t-42\t-6.2\t106\t\\N\ta\\tb\\\\c\\nd\n"
        );
    }
}
