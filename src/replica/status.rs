//! State names spelled as DRBD spells them, the status snapshot, and the
//! `drbdsetup events2`-style event lines.
//!
//! The enums serialise as their DRBD names ("UpToDate", "SyncTarget"), so
//! `--format json` and the human output agree with DRBD documentation and
//! with tools written against it (Ganeti's `is_degraded` rule included).
//!
//! Depends on nothing else in the crate.

use serde::Serialize;
use std::fmt;

macro_rules! drbd_enum {
    ($(#[$m:meta])* $name:ident { $($v:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
        pub enum $name { $($v),* }
        impl $name {
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$v => stringify!($v)),* }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

drbd_enum!(
    /// The resource role.
    Role { Primary, Secondary, Unknown }
);
drbd_enum!(
    /// Local disk state, or the peer's as last seen (`DUnknown` when there
    /// is no connection).
    DiskState { UpToDate, Inconsistent, Outdated, Consistent, DUnknown }
);
drbd_enum!(
    /// Connection state of the peer link.
    ConnState { StandAlone, Connecting, Connected, Disconnecting, NetworkFailure, Timeout, ProtocolError, BrokenPipe }
);
drbd_enum!(
    /// Replication state of the peer device.
    ReplState { Off, Established, SyncSource, SyncTarget, PausedSyncS, PausedSyncT, VerifyS, VerifyT }
);

impl DiskState {
    pub fn to_u8(self) -> u8 {
        match self {
            DiskState::UpToDate => 0,
            DiskState::Inconsistent => 1,
            DiskState::Outdated => 2,
            DiskState::Consistent => 3,
            DiskState::DUnknown => 4,
        }
    }
    pub fn from_u8(v: u8) -> DiskState {
        match v {
            0 => DiskState::UpToDate,
            1 => DiskState::Inconsistent,
            2 => DiskState::Outdated,
            3 => DiskState::Consistent,
            // Unknown values from a newer peer are shown, not trusted.
            _ => DiskState::DUnknown,
        }
    }
}

/// A status snapshot (`strata peer status`, `--format json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaStatus {
    pub name: String,
    pub node_id: u64,
    pub peer_node_id: Option<u64>,
    pub role: Role,
    pub peer_role: Role,
    pub disk: DiskState,
    pub peer_disk: DiskState,
    pub connection: ConnState,
    pub replication: ReplState,
    pub protocol: String,
    /// Bytes the peer lacks (dirty blocks × block size).
    pub out_of_sync: u64,
    /// Bytes of frames sent / received on this node's links.
    pub sent: u64,
    pub received: u64,
    /// Chunk payload bytes sent / received (the part dedup saves).
    pub chunk_bytes_sent: u64,
    pub chunk_bytes_received: u64,
    /// Resync progress in percent; None when not resyncing (Ganeti:
    /// "None means all is ok").
    pub done: Option<f64>,
    /// Seconds left at the recent resync rate; None when unknown.
    pub eta: Option<u64>,
    /// `no`, `user`, `peer` (DRBD `resync-suspended`).
    pub resync_suspended: String,
    /// Ganeti's rule: not Connected or local disk not UpToDate.
    pub degraded: bool,
    pub generation: String,
    /// The reason of the last refusal or failure, for humans.
    pub last_error: Option<String>,
}

/// Which object an event line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Resource,
    Device,
    Connection,
    PeerDevice,
}

impl Object {
    pub fn as_str(&self) -> &'static str {
        match self {
            Object::Resource => "resource",
            Object::Device => "device",
            Object::Connection => "connection",
            Object::PeerDevice => "peer-device",
        }
    }
}

/// One state change, rendered by [`event_line`].
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// `change`, `call` (a refusal or decision worth logging).
    pub verb: &'static str,
    pub object: Object,
    pub name: String,
    pub fields: Vec<(&'static str, String)>,
}

/// `change peer-device name:r0 replication:SyncTarget done:42.1`
pub fn event_line(c: &StateChange) -> String {
    let mut s = format!("{} {} name:{}", c.verb, c.object.as_str(), c.name);
    for (k, v) in &c.fields {
        s.push(' ');
        s.push_str(k);
        s.push(':');
        // Values with spaces (reasons) are quoted so the line stays
        // machine-splittable on spaces.
        if v.contains(' ') || v.is_empty() {
            s.push_str(&format!("{v:?}"));
        } else {
            s.push_str(v);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_use_drbd_spelling() {
        let c = StateChange {
            verb: "change",
            object: Object::PeerDevice,
            name: "r0".into(),
            fields: vec![("replication", ReplState::SyncTarget.to_string()), ("done", "42.1".into())],
        };
        assert_eq!(event_line(&c), "change peer-device name:r0 replication:SyncTarget done:42.1");
        assert_eq!(serde_json::to_string(&DiskState::UpToDate).unwrap(), "\"UpToDate\"");
    }
}
