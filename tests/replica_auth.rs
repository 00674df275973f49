//! Authentication and frame integrity of the replication link: wrong
//! secret, reflected challenge, replayed / tampered / truncated / garbage
//! frames, mismatched chunking, unrelated peers. Every refusal carries a
//! reason and nothing panics.

// Wrapped in a module named after the file so that `cargo test replica`
// selects these tests.
mod replica_auth {
    use proptest::prelude::*;
    use strata::replica::sim::{Sim, test_config};
    use strata::replica::wire::{self, Hello, Message};
    use strata::replica::{Action, AdminCommand, ConnState, Event, PersistedState, Protocol, Replica};

    fn connected(seed: u64) -> Sim {
        let mut s = Sim::new(seed, Protocol::C);
        s.start_pair();
        assert!(s.settle(5_000));
        s
    }

    fn frames(actions: &[Action]) -> Vec<Vec<u8>> {
        actions.iter().filter_map(|a| if let Action::SendFrame(f) = a { Some(f.clone()) } else { None }).collect()
    }

    /// Make node 0 emit one authenticated frame (a keepalive) and return it.
    fn next_frame_from_0(s: &mut Sim) -> Vec<u8> {
        let later = s.now + s.nodes[0].cfg.ping_interval_ms + 1;
        let acts = s.nodes[0].replica.step(Event::Tick(later));
        frames(&acts).pop().expect("a ping")
    }

    fn failure_count(s: &Sim, i: usize) -> usize {
        s.nodes[i].lines.iter().filter(|l| l.contains(" failure:")).count()
    }

    #[test]
    fn a_wrong_secret_is_refused_clearly_and_not_retried() {
        let mut b = test_config("r0", 2, 1, Protocol::C);
        b.secret = b"not the secret".to_vec();
        let mut s = Sim::with_configs(1, [test_config("r0", 1, 1, Protocol::C), b]);
        s.start_pair();
        s.run_ms(5_000);
        for i in 0..2 {
            let n = &s.nodes[i];
            assert_eq!(n.replica.connection(), ConnState::StandAlone);
            let e = n.replica.last_error().unwrap_or_default();
            assert!(e.contains("wrong secret"), "node {i}: {e}");
            assert_eq!(failure_count(&s, i), 1, "a refusal must not cause a reconnect storm:\n{}", s.lines(i));
        }
        // An admin Connect tries again (once).
        s.admin(0, AdminCommand::Connect);
        s.admin(1, AdminCommand::Connect);
        s.run_ms(2_000);
        assert_eq!(failure_count(&s, 0), 2);
    }

    #[test]
    fn different_chunking_parameters_are_refused() {
        let mut b = test_config("r0", 2, 2, Protocol::C);
        b.block_size = 8192;
        let mut s = Sim::with_configs(2, [test_config("r0", 1, 2, Protocol::C), b]);
        s.start_pair();
        s.run_ms(2_000);
        for i in 0..2 {
            assert_eq!(s.nodes[i].replica.connection(), ConnState::StandAlone);
            assert!(s.nodes[i].replica.last_error().unwrap().contains("chunking parameters differ"));
        }
    }

    #[test]
    fn a_peer_with_unrelated_data_is_refused() {
        let mut s = Sim::new(3, Protocol::C);
        // Two independently created primaries that never met.
        s.admin(0, AdminCommand::Promote { force: true });
        s.admin(1, AdminCommand::Promote { force: true });
        s.admin(1, AdminCommand::Demote);
        s.admin(0, AdminCommand::Connect);
        s.admin(1, AdminCommand::Connect);
        s.run_ms(2_000);
        for i in 0..2 {
            assert_eq!(s.nodes[i].replica.connection(), ConnState::StandAlone);
            assert!(s.nodes[i].replica.last_error().unwrap().contains("unrelated data"), "{}", s.lines(i));
        }
    }

    #[test]
    fn a_reflected_challenge_is_refused() {
        let mut a = Replica::new(test_config("r0", 1, 4, Protocol::C), PersistedState::default());
        a.step(Event::Admin(AdminCommand::Connect));
        let out = frames(&a.step(Event::Connected));
        assert_eq!(out.len(), 2);
        let ch = match wire::decode_message(&wire::parse_frame(&out[1]).unwrap()).unwrap() {
            Message::Challenge(c) => c,
            other => panic!("expected a challenge, got {other:?}"),
        };
        let hello = Message::Hello(Hello {
            node_id: 2,
            store_uuid: Default::default(),
            proto_version: wire::PROTOCOL_VERSION,
            block_size: 4096,
            protocol: b'C',
            hash_name: "blake3".into(),
        });
        a.step(Event::FrameReceived(wire::encode_unsealed(&hello, 1)));
        a.step(Event::FrameReceived(wire::encode_unsealed(&Message::Challenge(ch), 2)));
        assert_eq!(a.connection(), ConnState::StandAlone);
        assert!(a.last_error().unwrap().contains("reflected our own challenge"), "{:?}", a.last_error());
    }

    #[test]
    fn data_frames_before_authentication_are_refused() {
        let mut a = Replica::new(test_config("r0", 1, 5, Protocol::C), PersistedState::default());
        a.step(Event::Admin(AdminCommand::Connect));
        a.step(Event::Connected);
        let ship = Message::Ack { kind: wire::AckKind::Durable, batch: 1, record_seq: 1 };
        a.step(Event::FrameReceived(wire::encode_unsealed(&ship, 1)));
        assert_eq!(a.connection(), ConnState::ProtocolError);
        assert!(a.last_error().unwrap().contains("before authentication"));
    }

    #[test]
    fn a_replayed_frame_is_refused() {
        let mut s = connected(6);
        let f = next_frame_from_0(&mut s);
        s.deliver(1, Event::FrameReceived(f.clone()));
        assert_eq!(s.nodes[1].replica.connection(), ConnState::Connected);
        s.deliver(1, Event::FrameReceived(f));
        assert_eq!(s.nodes[1].replica.connection(), ConnState::ProtocolError);
        assert!(s.nodes[1].replica.last_error().unwrap().contains("out of order"));
        // A broken link is transient: the pair reconnects by itself.
        assert!(s.settle(5_000));
    }

    #[test]
    fn a_tampered_frame_is_refused() {
        let mut s = connected(7);
        let mut f = next_frame_from_0(&mut s);
        let at = wire::HEADER_LEN + 1;
        f[at] ^= 0x40;
        s.deliver(1, Event::FrameReceived(f));
        assert_eq!(s.nodes[1].replica.connection(), ConnState::ProtocolError);
        assert!(s.nodes[1].replica.last_error().unwrap().contains("MAC"), "{:?}", s.nodes[1].replica.last_error());
    }

    #[test]
    fn a_frame_sealed_for_the_other_direction_is_refused() {
        // Reflection of an authenticated frame back to its sender.
        let mut s = connected(8);
        let f = next_frame_from_0(&mut s);
        s.deliver(0, Event::FrameReceived(f));
        assert_eq!(s.nodes[0].replica.connection(), ConnState::ProtocolError);
    }

    #[test]
    fn truncated_frames_are_refused_with_a_reason() {
        let mut s = connected(9);
        let f = next_frame_from_0(&mut s);
        s.deliver(1, Event::FrameReceived(f[..f.len() - 3].to_vec()));
        assert_eq!(s.nodes[1].replica.connection(), ConnState::ProtocolError);
        assert!(s.nodes[1].replica.last_error().unwrap().contains("truncated"));
    }

    fn cases(default: u32) -> u32 {
        std::env::var("REPLICA_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    proptest! {
        // REPLICA_CASES=5000 for a soak run.
        #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

        #[test]
        fn the_decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300), ty in 0u16..20) {
            let _ = wire::parse_frame(&bytes);
            let _ = wire::frame_len(&bytes);
            if let Ok(t) = wire::MessageType::from_u16(ty) {
                let _ = Message::decode_payload(t, &bytes);
            }
            // A valid header in front of random bytes reaches the payload decoders.
            let mut framed = wire::encode_unsealed(&Message::Ping(0), 1)[..8].to_vec();
            framed[6..8].copy_from_slice(&ty.to_le_bytes());
            framed.extend_from_slice(&1u64.to_le_bytes());
            framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(&[0; 16]);
            if let Ok(f) = wire::parse_frame(&framed) {
                let _ = wire::decode_message(&f);
            }
        }

        #[test]
        fn random_or_mutated_frames_never_panic_a_connected_replica(
            seed in 0u64..1000,
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            flip in any::<usize>(),
            mutate in any::<bool>(),
        ) {
            let mut s = connected(seed);
            let input = if mutate {
                let mut f = next_frame_from_0(&mut s);
                let i = flip % f.len();
                f[i] ^= 1 | (bytes.first().copied().unwrap_or(0));
                f
            } else {
                bytes
            };
            s.deliver(1, Event::FrameReceived(input));
            // Every byte of a frame is covered by its MAC or its sequence
            // number, so any change is refused, with a reason.
            prop_assert_eq!(s.nodes[1].replica.connection(), ConnState::ProtocolError);
            prop_assert!(s.nodes[1].replica.last_error().is_some());
            prop_assert!(s.settle(10_000));
        }
    }
}
