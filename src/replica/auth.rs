//! Peer authentication and per-frame integrity.
//!
//! Owns the handshake cryptography and the frame MAC/sequence checks.
//! Built on BLAKE3 only (`derive_key` as the KDF, `keyed_hash` as the MAC).
//!
//! # Handshake (both directions, symmetric)
//!
//! 1. Each side sends a fresh 32-byte random challenge.
//! 2. A challenge equal to our own is a *reflection* (an attacker bouncing
//!    our challenge back to get us to answer it) and is refused.
//! 3. Each side answers the peer's challenge with
//!    `keyed_hash(K, "strata-auth-v1" ‖ role ‖ my_node_id ‖ peer_node_id ‖
//!    peer_challenge ‖ my_challenge)` where `K = derive_key(AUTH_CONTEXT,
//!    secret)` and `role` is 0 for the side with the smaller node id, 1 for
//!    the other. Binding the role and both node ids means a response can be
//!    neither reflected back nor replayed to another node; binding both
//!    challenges means it cannot be replayed into another session.
//! 4. The check uses [`ct_eq`] so timing does not leak how many bytes of a
//!    forged response were right.
//!
//! # Session
//!
//! Each direction gets its own key,
//! `keyed_hash(K, "strata-session-v1" ‖ sender ‖ receiver ‖ c_lo ‖ c_hi)`
//! (`c_lo`/`c_hi` = the two challenges of the smaller / larger node id), so
//! a frame cannot be reflected back to its sender. Every frame after the
//! sender's Response carries `keyed_hash(key, header ‖ payload)[..16]`, and
//! frame numbers must be exactly previous + 1: replayed, dropped, reordered
//! and tampered frames are all refused with a reason.
//!
//! Depends on: `blake3`. Holds no locks.

/// Context string of the long-term key derivation (BLAKE3 `derive_key`).
pub const AUTH_CONTEXT: &str = "strata 2026 replica shared-secret auth v1";
const RESPONSE_LABEL: &[u8] = b"strata-auth-v1";
const SESSION_LABEL: &[u8] = b"strata-session-v1";

/// Why authentication or a frame check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed: the peer does not know our shared secret (wrong secret)")]
    WrongSecret,
    #[error("authentication failed: the peer reflected our own challenge")]
    ReflectedChallenge,
    #[error("authentication failed: the peer claims our own node id {0}")]
    SameNodeId(u64),
    #[error("frame {got} out of order: expected frame {expected} (replayed, lost or reordered)")]
    BadSequence { expected: u64, got: u64 },
    #[error("frame {seq} failed its MAC check (tampered or wrong session)")]
    BadMac { seq: u64 },
    #[error("unauthenticated {what} frame received after authentication")]
    Unauthenticated { what: &'static str },
}

/// Compare two byte strings in time independent of where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The long-term key derived from the shared secret.
pub fn long_term_key(secret: &[u8]) -> [u8; 32] {
    blake3::derive_key(AUTH_CONTEXT, secret)
}

fn role_of(me: u64, peer: u64) -> u8 {
    u8::from(me > peer)
}

/// The response `me` sends to answer `peer_challenge`.
pub fn response(key: &[u8; 32], me: u64, peer: u64, peer_challenge: &[u8; 32], my_challenge: &[u8; 32]) -> [u8; 32] {
    let mut m = Vec::with_capacity(RESPONSE_LABEL.len() + 1 + 16 + 64);
    m.extend_from_slice(RESPONSE_LABEL);
    m.push(role_of(me, peer));
    m.extend_from_slice(&me.to_le_bytes());
    m.extend_from_slice(&peer.to_le_bytes());
    m.extend_from_slice(peer_challenge);
    m.extend_from_slice(my_challenge);
    *blake3::keyed_hash(key, &m).as_bytes()
}

/// Check the peer's response to our challenge.
pub fn verify_response(
    key: &[u8; 32],
    me: u64,
    peer: u64,
    my_challenge: &[u8; 32],
    peer_challenge: &[u8; 32],
    got: &[u8; 32],
) -> Result<(), AuthError> {
    // The peer computed response(key, peer, me, my_challenge, peer_challenge).
    let want = response(key, peer, me, my_challenge, peer_challenge);
    if ct_eq(&want, got) { Ok(()) } else { Err(AuthError::WrongSecret) }
}

/// The per-direction key for frames from `sender` to `receiver`.
pub fn session_key(
    key: &[u8; 32],
    sender: u64,
    receiver: u64,
    sender_ch: &[u8; 32],
    receiver_ch: &[u8; 32],
) -> [u8; 32] {
    let (lo, hi) = if sender < receiver { (sender_ch, receiver_ch) } else { (receiver_ch, sender_ch) };
    let mut m = Vec::with_capacity(SESSION_LABEL.len() + 16 + 64);
    m.extend_from_slice(SESSION_LABEL);
    m.extend_from_slice(&sender.to_le_bytes());
    m.extend_from_slice(&receiver.to_le_bytes());
    m.extend_from_slice(lo);
    m.extend_from_slice(hi);
    *blake3::keyed_hash(key, &m).as_bytes()
}

/// The MAC of a frame's header and payload.
pub fn frame_mac(key: &[u8; 32], authed: &[u8]) -> [u8; 16] {
    let h = blake3::keyed_hash(key, authed);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// One direction of a connection: the next frame number and, once the
/// handshake authenticated the peer, the session key.
#[derive(Debug, Clone, Default)]
pub struct Channel {
    next_seq: u64,
    key: Option<[u8; 32]>,
}

impl Channel {
    pub fn new() -> Channel {
        Channel { next_seq: 1, key: None }
    }
    pub fn set_key(&mut self, key: [u8; 32]) {
        self.key = Some(key);
    }
    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// Sending side: number and seal a frame body.
    pub fn seal(&mut self, msg: &super::wire::Message) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let body = super::wire::frame_body(msg, seq);
        let mac = match &self.key {
            Some(k) => frame_mac(k, &body),
            None => [0; 16],
        };
        super::wire::seal(body, mac)
    }

    /// Receiving side: check number and MAC. The MAC is checked before the
    /// sequence number so that a forged frame cannot advance or probe the
    /// counter.
    pub fn open(&mut self, frame: &super::wire::RawFrame) -> Result<(), AuthError> {
        if let Some(k) = &self.key
            && !ct_eq(&frame_mac(k, &frame.authed), &frame.mac)
        {
            return Err(AuthError::BadMac { seq: frame.seq });
        }
        if frame.seq != self.next_seq {
            return Err(AuthError::BadSequence { expected: self.next_seq, got: frame.seq });
        }
        self.next_seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_matches_plain_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn responses_verify_only_with_the_same_secret_and_direction() {
        let k = long_term_key(b"s3cret");
        let (ca, cb) = ([1u8; 32], [2u8; 32]);
        // A (node 1) answers B's challenge; B verifies.
        let r = response(&k, 1, 2, &cb, &ca);
        assert_eq!(verify_response(&k, 2, 1, &cb, &ca, &r), Ok(()));
        let wrong = long_term_key(b"other");
        assert_eq!(verify_response(&wrong, 2, 1, &cb, &ca, &r), Err(AuthError::WrongSecret));
        // Reflected back to A as if from B: role and node order differ.
        assert_eq!(verify_response(&k, 1, 2, &ca, &cb, &r), Err(AuthError::WrongSecret));
    }

    #[test]
    fn session_keys_differ_per_direction_and_agree_across_sides() {
        let k = long_term_key(b"s");
        let (ca, cb) = ([1u8; 32], [2u8; 32]);
        let a_to_b_at_a = session_key(&k, 1, 2, &ca, &cb);
        let a_to_b_at_b = session_key(&k, 1, 2, &ca, &cb);
        let b_to_a = session_key(&k, 2, 1, &cb, &ca);
        assert_eq!(a_to_b_at_a, a_to_b_at_b);
        assert_ne!(a_to_b_at_a, b_to_a);
    }
}
