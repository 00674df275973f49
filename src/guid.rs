//! Random 128-bit identifiers for image groups (disks) and volumes (layers).
//!
//! Identity never depends on a user-visible name or on a SQLite rowid
//! (seed 000): a GUID is random, printed in the usual 8-4-4-4-12 form, and
//! the all-zero GUID means "no parent" as in oVirt's `BLANK_UUID`.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID: the parent of a base layer.
    pub const BLANK: Guid = Guid([0; 16]);

    pub fn new_random() -> Guid {
        Guid(*uuid::Uuid::new_v4().as_bytes())
    }

    pub fn is_blank(&self) -> bool {
        self.0 == [0; 16]
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", uuid::Uuid::from_bytes(self.0).hyphenated())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = String;
    fn from_str(s: &str) -> Result<Guid, String> {
        uuid::Uuid::parse_str(s).map(|u| Guid(*u.as_bytes())).map_err(|e| format!("not a GUID: {s:?} ({e})"))
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Guid, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trips_through_text() {
        let g = Guid::new_random();
        assert_eq!(g.to_string().parse::<Guid>().unwrap(), g);
        assert_eq!(Guid::BLANK.to_string(), "00000000-0000-0000-0000-000000000000");
    }
}
