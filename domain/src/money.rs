//! Money: whole Indonesian rupiah in an `i64`, never a float.

use std::fmt;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

/// An amount of whole rupiah. Arithmetic is plain integer arithmetic; amounts in this
/// system stay far below `i64::MAX` (the maximum fare is 500,000).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rupiah(i64);

impl Rupiah {
    /// Zero rupiah.
    pub const ZERO: Rupiah = Rupiah(0);

    /// An amount of rupiah.
    pub const fn new(amount: i64) -> Self {
        Self(amount)
    }

    /// The amount as an integer.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl Add for Rupiah {
    type Output = Rupiah;
    fn add(self, rhs: Rupiah) -> Rupiah {
        Rupiah(self.0 + rhs.0)
    }
}

impl Sub for Rupiah {
    type Output = Rupiah;
    fn sub(self, rhs: Rupiah) -> Rupiah {
        Rupiah(self.0 - rhs.0)
    }
}

impl std::iter::Sum for Rupiah {
    fn sum<I: Iterator<Item = Rupiah>>(iter: I) -> Rupiah {
        Rupiah(iter.map(|r| r.0).sum())
    }
}

impl fmt::Display for Rupiah {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rp{}", self.0)
    }
}

impl fmt::Debug for Rupiah {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rupiah({})", self.0)
    }
}
