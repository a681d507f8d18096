//! Telkomsel phone numbers (SPEC.md §3): the only numbers that may log in.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// Telkomsel prefixes after the country code.
const PREFIXES: [&str; 9] = ["811", "812", "813", "821", "822", "823", "851", "852", "853"];

/// A normalized Telkomsel MSISDN, stored as `62` + the national number.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Msisdn(String);

impl Msisdn {
    /// Parses a number as people type it: spaces, `-` and `+` are stripped, then a
    /// leading `62` or else a leading `0` is dropped; what remains must be a Telkomsel
    /// prefix followed by 6 to 8 digits.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-' | '+')).collect();
        let national = digits
            .strip_prefix("62")
            .or_else(|| digits.strip_prefix('0'))
            .unwrap_or(&digits);
        let valid = national.len() >= 9
            && national.len() <= 11
            && national.bytes().all(|b| b.is_ascii_digit())
            && PREFIXES.iter().any(|p| national.starts_with(p));
        if valid {
            Ok(Self(format!("62{national}")))
        } else {
            Err(DomainError::validation(
                "msisdn must be a Telkomsel number (e.g. 0812-3456-789)",
            ))
        }
    }

    /// The stored form, `62...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form for logs: the country code and operator prefix and the last two
    /// digits, the rest starred (`62812*******89`). A full number in a log would tie
    /// every line to a person.
    pub fn masked(&self) -> Masked<'_> {
        Masked(self)
    }
}

/// A number as logs show it; see [`Msisdn::masked`].
#[derive(Clone, Copy)]
pub struct Masked<'a>(&'a Msisdn);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_str();
        // Always `62` + at least 9 ASCII digits (see `parse`).
        let (head, rest) = s.split_at(5.min(s.len()));
        let tail = rest.len().saturating_sub(2);
        f.write_str(head)?;
        for _ in 0..tail {
            f.write_str("*")?;
        }
        f.write_str(&rest[tail..])
    }
}

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TryFrom<String> for Msisdn {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Msisdn::parse(&value)
    }
}

impl From<Msisdn> for String {
    fn from(m: Msisdn) -> String {
        m.0
    }
}

impl fmt::Display for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Msisdn {
    /// Masked: `Debug` is what ends up in logs by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Msisdn({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(Msisdn::parse("0822-1234-567").unwrap().as_str(), "628221234567");
        assert!(Msisdn::parse("08561234567").is_err());
    }

    #[test]
    fn accepts_country_code_forms() {
        for input in ["+62 812 3456 789", "6281234567890", "0812 345 678", "812345678"] {
            let m = Msisdn::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert!(m.as_str().starts_with("62812"), "{input} -> {m}");
        }
    }

    #[test]
    fn logs_see_a_masked_number() {
        let m = Msisdn::parse("0812-3456-789").unwrap();
        assert_eq!(m.masked().to_string(), "62812*****89");
        assert_eq!(format!("{m:?}"), "Msisdn(62812*****89)");
        assert!(!format!("{m:?}").contains("3456"));
    }

    #[test]
    fn rejects_wrong_lengths_and_letters() {
        for input in ["08123456", "0812345678901", "0812abc4567", "", "+", "62"] {
            assert!(Msisdn::parse(input).is_err(), "{input} should be refused");
        }
    }
}
