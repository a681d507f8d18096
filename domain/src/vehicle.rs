//! A driver's vehicle: its type and its Indonesian plate.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// `motorcycle`, `car` or `van`; accepted in any case, stored lower-case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VehicleType {
    /// Two wheels.
    Motorcycle,
    /// A car.
    Car,
    /// A van.
    Van,
}

impl VehicleType {
    /// Parses any case of `motorcycle`, `car`, `van`.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        match input.trim().to_ascii_lowercase().as_str() {
            "motorcycle" => Ok(Self::Motorcycle),
            "car" => Ok(Self::Car),
            "van" => Ok(Self::Van),
            _ => Err(DomainError::validation(
                "vehicle_type must be motorcycle, car or van",
            )),
        }
    }

    /// The stored, lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Motorcycle => "motorcycle",
            Self::Car => "car",
            Self::Van => "van",
        }
    }
}

/// An Indonesian plate: 1–2 letters, 1–4 digits, 0–3 letters; spaces optional in the
/// input, stored upper-case with single spaces (`b1234xyz` → `B 1234 XYZ`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Plate(String);

impl Plate {
    /// Parses and normalizes a plate.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let compact: String = input
            .chars()
            .filter(|c| *c != ' ')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let bytes = compact.as_bytes();
        let region = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
        let number = bytes[region..].iter().take_while(|b| b.is_ascii_digit()).count();
        let suffix = bytes[region + number..]
            .iter()
            .take_while(|b| b.is_ascii_uppercase())
            .count();
        let valid = (1..=2).contains(&region)
            && (1..=4).contains(&number)
            && suffix <= 3
            && region + number + suffix == bytes.len();
        if !valid {
            return Err(DomainError::validation(
                "vehicle_plate must be an Indonesian plate such as B 1234 XYZ",
            ));
        }
        let mut out = format!("{} {}", &compact[..region], &compact[region..region + number]);
        if suffix > 0 {
            out.push(' ');
            out.push_str(&compact[region + number..]);
        }
        Ok(Self(out))
    }

    /// The stored form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Plate {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Plate::parse(&value)
    }
}

impl From<Plate> for String {
    fn from(p: Plate) -> String {
        p.0
    }
}

impl fmt::Display for Plate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Plate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plate({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_plates() {
        assert_eq!(Plate::parse("b1234xyz").unwrap().as_str(), "B 1234 XYZ");
        assert_eq!(Plate::parse("D 1 A").unwrap().as_str(), "D 1 A");
        assert_eq!(Plate::parse("AB  12").unwrap().as_str(), "AB 12");
        assert_eq!(Plate::parse("b 1234   xyz").unwrap().as_str(), "B 1234 XYZ");
    }

    #[test]
    fn refuses_malformed_plates() {
        for input in [
            "",
            "1234",
            "ABC 1234",
            "B 12345",
            "B 1234 WXYZ",
            "B-1234",
            "B 12 X 3",
            "É 1",
        ] {
            assert!(Plate::parse(input).is_err(), "{input:?} should be refused");
        }
    }

    #[test]
    fn vehicle_types_any_case() {
        assert_eq!(VehicleType::parse("CAR").unwrap(), VehicleType::Car);
        assert_eq!(VehicleType::parse("Motorcycle").unwrap().as_str(), "motorcycle");
        assert!(VehicleType::parse("bus").is_err());
    }
}
