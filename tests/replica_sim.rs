//! Replication protocol against the deterministic simulated network:
//! durability per protocol, prefix consistency, resync after heal,
//! dedup-aware shipping, split brain, keepalive timeouts and resumable
//! resync. Every case is a pure function of its seed.

// Wrapped in a module named after the file so that `cargo test replica`
// selects these tests.
mod replica_sim {
    use proptest::prelude::*;
    use strata::replica::sim::{self, NetFaults, Sim, W, content_hash, layer};
    use strata::replica::{AdminCommand, BlockKey, ConnState, DiskState, MapValue, Protocol, ReplState, Role};

    fn key(l: u8, b: u64) -> BlockKey {
        BlockKey { layer: layer(l), block_no: b }
    }

    fn assert_identical(s: &Sim) {
        assert_eq!(s.nodes[0].engine.map, s.nodes[1].engine.map, "maps differ\n{}\n---\n{}", s.lines(0), s.lines(1));
        assert_eq!(s.nodes[0].engine.catalogue, s.nodes[1].engine.catalogue, "catalogues differ");
    }

    fn connected_pair(seed: u64, p: Protocol) -> Sim {
        let mut s = Sim::new(seed, p);
        s.start_pair();
        assert!(s.settle(5_000), "pair did not connect\n{}\n---\n{}", s.lines(0), s.lines(1));
        s
    }

    #[test]
    fn a_new_pair_connects_and_replicates_writes() {
        let mut s = connected_pair(1, Protocol::C);
        for i in 0..20 {
            s.write(0, &[(key(1, i), W::Data(i as u32))]);
        }
        let id = s.flush(0).unwrap();
        assert!(s.settle(5_000));
        assert_identical(&s);
        assert!(s.nodes[0].flushes_done.iter().any(|&(f, replicated, _)| f == id && replicated));
        let st = s.nodes[1].replica.status();
        assert_eq!((st.role, st.disk, st.replication), (Role::Secondary, DiskState::UpToDate, ReplState::Established));
        assert!(!s.nodes[0].replica.status().degraded);
        assert!(s.lines(1).contains("change peer-device name:r0 replication:Established peer-disk:UpToDate"));
    }

    #[test]
    fn status_serialises_with_drbd_names_and_ganeti_degraded() {
        let mut s = connected_pair(11, Protocol::C);
        let json = serde_json::to_value(s.nodes[0].replica.status()).unwrap();
        assert_eq!(json["role"], "Primary");
        assert_eq!(json["disk"], "UpToDate");
        assert_eq!(json["peer-disk"], "UpToDate");
        assert_eq!(json["connection"], "Connected");
        assert_eq!(json["replication"], "Established");
        assert_eq!(json["out-of-sync"], 0);
        assert_eq!(json["degraded"], false);
        assert!(json["done"].is_null(), "None means all is ok");
        s.partition(true);
        s.write(0, &[(key(1, 1), W::Data(1)), (key(1, 2), W::Zero)]);
        s.run_ms(1_000);
        let st = s.nodes[0].replica.status();
        assert!(st.degraded);
        assert_eq!(st.peer_disk, DiskState::DUnknown);
        assert_eq!(st.out_of_sync, 2 * 4096);
    }

    #[test]
    fn writing_data_the_peer_already_holds_sends_no_chunk_payload() {
        let mut s = connected_pair(2, Protocol::C);
        s.write(0, &[(key(1, 0), W::Data(7))]);
        assert!(s.settle(5_000));
        let before = s.nodes[0].replica.status().chunk_bytes_sent;
        // Same content at 50 other blocks, and zeros: map entries only.
        for b in 1..=50 {
            s.write(0, &[(key(2, b), W::Data(7)), (key(1, 100 + b), W::Zero)]);
        }
        assert!(s.settle(5_000));
        assert_identical(&s);
        assert_eq!(s.nodes[0].replica.status().chunk_bytes_sent, before);
    }

    // ------------------------------------------------------------ properties

    /// Chaos parameters for one property case.
    #[derive(Debug, Clone)]
    struct Chaos {
        seed: u64,
        faults: NetFaults,
        steps: usize,
        write_pm: u32,
        partition_pm: u32,
        crash_secondary_pm: u32,
        crash_primary_at: usize,
        silent_crash: bool,
    }

    fn chaos() -> impl Strategy<Value = Chaos> {
        (
            any::<u64>(),
            0u32..15,
            0u32..8,
            0u32..8,
            0u64..30,
            60usize..160,
            100u32..500,
            0u32..25,
            0u32..15,
            0usize..160,
            any::<bool>(),
        )
            .prop_map(
                |(seed, drop, duplicate, reorder, delay, steps, write_pm, partition_pm, crash_pm, at, silent)| Chaos {
                    seed,
                    faults: NetFaults { drop, duplicate, reorder, delay_min_ms: 0, delay_max_ms: delay },
                    steps,
                    write_pm,
                    partition_pm,
                    crash_secondary_pm: crash_pm,
                    crash_primary_at: at,
                    silent_crash: silent,
                },
            )
    }

    fn pm(s: &mut Sim, per_mille: u32, salt: u64) -> bool {
        // Derive decisions from the simulation clock and the seed so the run
        // stays a function of the case.
        let x = (s.now.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (x >> 33) % 1000 < per_mille as u64
    }

    /// Every value a block takes from record `from` on (inclusive state).
    fn values_from(
        history: &[strata::replica::Record],
        from: usize,
    ) -> std::collections::HashMap<BlockKey, Vec<MapValue>> {
        let base = sim::state_after(history, from);
        let mut out: std::collections::HashMap<BlockKey, Vec<MapValue>> = std::collections::HashMap::new();
        let mut keys: std::collections::BTreeSet<BlockKey> = base.keys().copied().collect();
        for r in &history[from.min(history.len())..] {
            keys.extend(r.updates.iter().map(|u| u.key()));
        }
        for k in &keys {
            out.entry(*k).or_default().push(base.get(k).copied().unwrap_or(MapValue::Absent));
        }
        for r in &history[from.min(history.len())..] {
            for u in &r.updates {
                out.entry(u.key()).or_default().push(u.value);
            }
        }
        out
    }

    /// Drive a chaotic run; returns the sim after the primary crashed (or the
    /// run ended). Checks the prefix property at every tick on the way.
    fn chaotic_run(c: &Chaos, protocol: Protocol) -> (Sim, Option<u64>) {
        let mut s = Sim::new(c.seed, protocol);
        s.start_pair();
        assert!(s.settle(5_000), "initial connect");
        s.faults = c.faults;
        let mut crashed_flush_floor = None;
        for step in 0..c.steps {
            if pm(&mut s, c.write_pm, c.seed ^ 1) {
                s.random_write(0, 48, 12);
            }
            if pm(&mut s, 150, c.seed ^ 2) {
                s.flush(0);
            }
            if pm(&mut s, c.partition_pm, c.seed ^ 3) {
                let p = !s.partitioned;
                s.partition(p);
            }
            if pm(&mut s, c.crash_secondary_pm, c.seed ^ 4) {
                s.crash(1, c.silent_crash);
            } else if !s.nodes[1].alive && pm(&mut s, 200, c.seed ^ 5) {
                s.restart(1);
            }
            s.tick();
            // Prefix property: whenever the secondary claims UpToDate, its
            // store is the primary's state after some prefix of records.
            if s.nodes[1].alive && s.nodes[1].replica.disk() == DiskState::UpToDate {
                let h = &s.nodes[0].history;
                assert!(
                    sim::is_prefix_state(h, &s.nodes[1].engine.map).is_some(),
                    "secondary is UpToDate but not a prefix at {}\n{}\n---\n{}",
                    s.now,
                    s.lines(0),
                    s.lines(1)
                );
            }
            if step == c.crash_primary_at {
                s.crash(0, c.silent_crash);
                // The latest flush the primary reported as replicated.
                crashed_flush_floor = s.nodes[0].flushes_done.iter().filter(|f| f.1).map(|f| f.2).max();
                break;
            }
        }
        (s, crashed_flush_floor)
    }

    fn heal_and_check(s: &mut Sim) {
        s.faults = NetFaults::default();
        s.partition(false);
        s.restart(0);
        s.restart(1);
        assert!(s.settle(30_000), "did not resync after heal\n{}\n---\n{}", s.lines(0), s.lines(1));
        assert_identical(s);
        for n in &s.nodes {
            let st = n.replica.status();
            assert_eq!(
                (st.disk, st.peer_disk, st.replication),
                (DiskState::UpToDate, DiskState::UpToDate, ReplState::Established)
            );
            assert!(!st.degraded);
        }
    }

    fn cases(default: u32) -> u32 {
        std::env::var("REPLICA_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    proptest! {
        // REPLICA_CASES=5000 for a soak run.
        #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

        /// (a) Protocol C: every flush completed as replicated is on the
        /// secondary even if the primary crashes right after; (c) heal → equal.
        #[test]
        fn protocol_c_replicated_flushes_survive_a_primary_crash(c in chaos()) {
            let (mut s, floor) = chaotic_run(&c, Protocol::C);
            if let Some(f) = floor {
                let allowed = values_from(&s.nodes[0].history, f as usize);
                for (k, vals) in &allowed {
                    let got = s.nodes[1].engine.map.get(k).copied().unwrap_or(MapValue::Absent);
                    prop_assert!(vals.contains(&got), "block {:?} lost flushed data (flush at record {})", k, f);
                }
            }
            heal_and_check(&mut s);
        }

        /// (b) Protocol A: after any crash the secondary holds a prefix of the
        /// primary's records (checked at every tick while UpToDate and at the
        /// crash); (c) heal → equal.
        #[test]
        fn protocol_a_secondary_always_holds_a_prefix(c in chaos()) {
            let (mut s, _) = chaotic_run(&c, Protocol::A);
            if s.nodes[1].replica.disk() == DiskState::UpToDate {
                prop_assert!(sim::is_prefix_state(&s.nodes[0].history, &s.nodes[1].engine.map).is_some());
            }
            heal_and_check(&mut s);
        }

        /// (d) After a partition only the changed blocks travel, and only chunk
        /// payloads the secondary lacks.
        #[test]
        fn resync_ships_only_changed_blocks_and_missing_chunks(seed in any::<u64>(), n in 1u64..120, reuse in 0u32..10) {
            let mut s = connected_pair(seed, Protocol::C);
            for b in 0..64 {
                s.write(0, &[(key(1, b), W::Data(b as u32))]);
            }
            prop_assert!(s.settle(5_000));
            let chunk_before = s.nodes[1].replica.status().chunk_bytes_received;
            s.partition(true);
            let mut changed = std::collections::BTreeSet::new();
            let mut new_contents = std::collections::BTreeSet::new();
            for i in 0..n {
                let b = (seed.wrapping_add(i * 7)) % 200;
                // Contents < 64 already live on the secondary.
                let c = if (i as u32) % 10 < reuse { (i % 64) as u32 } else { 1000 + i as u32 };
                s.write(0, &[(key(2, b), W::Data(c))]);
                changed.insert(b);
                if c >= 1000 { new_contents.insert(c); }
            }
            s.partition(false);
            prop_assert!(s.settle(30_000));
            assert_identical(&s);
            let resync = s.nodes[1].engine.resync_updates_applied;
            prop_assert!(resync <= changed.len() as u64, "resync sent {} updates for {} changed blocks", resync, changed.len());
            let chunk_bytes = s.nodes[1].replica.status().chunk_bytes_received - chunk_before;
            // Content overwritten again within the partition is never sent.
            prop_assert!(chunk_bytes <= new_contents.len() as u64 * 256);
            let total_payload: u64 = (64 + n) * 256;
            prop_assert!(chunk_bytes < total_payload);
        }

        /// (e) Writes on both sides while partitioned, both Primary: detected,
        /// refused, never merged; DiscardMyData resolves it and preserves the
        /// victim's divergent layers.
        #[test]
        fn split_brain_is_refused_then_resolved_by_discard_my_data(seed in any::<u64>(), wa in 1u64..20, wb in 1u64..20) {
            let mut s = connected_pair(seed, Protocol::C);
            for b in 0..16 { s.write(0, &[(key(1, b), W::Data(b as u32))]); }
            prop_assert!(s.settle(5_000));
            s.partition(true);
            s.run_ms(1_000);
            s.admin(1, AdminCommand::Promote { force: false });
            prop_assert_eq!(s.nodes[1].replica.role(), Role::Primary);
            for i in 0..wa { s.write(0, &[(key(1, i % 16), W::Data(500 + i as u32))]); }
            for i in 0..wb { s.write(1, &[(key(2, i), W::Data(900 + i as u32))]); }
            let (a_map, b_map) = (s.nodes[0].engine.map.clone(), s.nodes[1].engine.map.clone());
            s.partition(false);
            s.run_ms(3_000);
            for n in &s.nodes {
                prop_assert_eq!(n.replica.connection(), ConnState::StandAlone);
                prop_assert!(n.replica.last_error().unwrap_or("").contains("split brain"), "{:?}", n.replica.last_error());
                // One refusal, no reconnect storm.
                prop_assert_eq!(n.lines.iter().filter(|l| l.contains("uuid-compare:SplitBrain")).count(), 1);
            }
            prop_assert_eq!(&s.nodes[0].engine.map, &a_map);
            prop_assert_eq!(&s.nodes[1].engine.map, &b_map);
            // Resolve: node 1 is the victim.
            s.admin(1, AdminCommand::Demote);
            s.admin(1, AdminCommand::DiscardMyData);
            s.admin(0, AdminCommand::Connect);
            prop_assert!(s.settle(20_000), "no resync after discard\n{}\n---\n{}", s.lines(0), s.lines(1));
            prop_assert_eq!(&s.nodes[1].engine.map, &a_map);
            let preserved = &s.nodes[1].engine.preserved;
            prop_assert_eq!(preserved.len(), 1);
            prop_assert!(preserved[0].0.contains(&layer(2)));
        }
    }

    /// Cut the link at tick `cut` of a (re)connection — anywhere in the
    /// handshake, the resync or the SyncDone / adoption exchange — then let
    /// both sides write apart (the old Primary keeps writing, the other is
    /// promoted, forced if need be), demote the old Primary and heal.
    /// Returns the sim and each side's writes after the cut.
    fn cut_then_write_both(
        seed: u64,
        delay: u64,
        cut: u64,
        bitmap_resync: bool,
    ) -> (Sim, [Vec<(BlockKey, MapValue)>; 2]) {
        let mut s = Sim::new(seed, Protocol::C);
        // Hops of `delay` ms spread the exchange over ticks.
        let slow = NetFaults { delay_min_ms: delay, delay_max_ms: delay, ..NetFaults::default() };
        if bitmap_resync {
            s.start_pair();
            assert!(s.settle(5_000), "initial connect");
            for b in 0..8 {
                s.write(0, &[(key(1, b), W::Data(b as u32))]);
            }
            assert!(s.settle(5_000));
            s.partition(true);
            for b in 0..6 {
                s.write(0, &[(key(1, b), W::Data(100 + b as u32))]);
            }
            s.run_ms(1_000);
            s.faults = slow;
            s.partition(false);
        } else {
            s.faults = slow;
            // A new pair: the initial full sync is the exchange cut.
            for b in 0..6 {
                s.nodes[0].wants_primary = true;
                s.admin(0, AdminCommand::Promote { force: true });
                s.write(0, &[(key(1, b), W::Data(200 + b as u32))]);
            }
            s.admin(0, AdminCommand::Connect);
            s.admin(1, AdminCommand::Connect);
        }
        for _ in 0..cut {
            s.tick();
        }
        s.partition(true);
        s.run_ms(1_000);
        let mut wrote: [Vec<(BlockKey, MapValue)>; 2] = [Vec::new(), Vec::new()];
        for i in 0..3u64 {
            let v = 5_000 + i as u32;
            if s.write(0, &[(key(3, i), W::Data(v))]).is_some() {
                wrote[0].push((key(3, i), MapValue::Data(content_hash(v))));
            }
        }
        s.flush(0);
        s.admin(1, AdminCommand::Promote { force: true });
        assert_eq!(s.nodes[1].replica.role(), Role::Primary, "{:?}", s.nodes[1].refusals);
        for i in 0..3u64 {
            let v = 7_000 + i as u32;
            if s.write(1, &[(key(4, i), W::Data(v))]).is_some() {
                wrote[1].push((key(4, i), MapValue::Data(content_hash(v))));
            }
        }
        s.flush(1);
        s.nodes[0].wants_primary = false;
        s.admin(0, AdminCommand::Demote);
        s.faults = NetFaults::default();
        s.partition(false);
        s.run_ms(3_000);
        (s, wrote)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

        /// No write acknowledged on either side is silently discarded when
        /// the link drops at any point of a handshake or resync and both
        /// sides then write apart: the reconnect must be refused (split
        /// brain or unrelated data), never a resync over either side.
        #[test]
        fn a_disconnect_anywhere_in_the_sync_exchange_never_loses_writes_silently(
            seed in any::<u64>(),
            delay in prop::sample::select(vec![10u64, 20, 30]),
            cut in 0u64..80,
            bitmap_resync in any::<bool>(),
        ) {
            let (s, wrote) = cut_then_write_both(seed, delay, cut, bitmap_resync);
            for (i, n) in s.nodes.iter().enumerate() {
                prop_assert!(!wrote[i].is_empty(), "node {} could not write", i);
                for (k, v) in &wrote[i] {
                    prop_assert_eq!(
                        n.engine.map.get(k).copied().unwrap_or(MapValue::Absent), *v,
                        "node {} lost its acknowledged write to {:?} (cut at tick {})\n{}\n---\n{}",
                        i, k, cut, s.lines(0), s.lines(1)
                    );
                }
                let err = n.replica.last_error().unwrap_or("");
                prop_assert!(
                    err.contains("split brain") || err.contains("unrelated data"),
                    "node {} ended with {:?} (cut at tick {})\n{}\n---\n{}", i, err, cut, s.lines(0), s.lines(1)
                );
            }
        }
    }

    /// Every cut point of both exchanges, deterministically.
    #[test]
    fn a_disconnect_at_every_tick_of_the_sync_exchange_is_detected() {
        for bitmap_resync in [false, true] {
            for cut in 0..60 {
                let (s, wrote) = cut_then_write_both(42, 20, cut, bitmap_resync);
                for (i, n) in s.nodes.iter().enumerate() {
                    for (k, v) in &wrote[i] {
                        assert_eq!(
                            n.engine.map.get(k).copied().unwrap_or(MapValue::Absent),
                            *v,
                            "node {i} lost a write (cut {cut}, bitmap {bitmap_resync})\n{}\n---\n{}",
                            s.lines(0),
                            s.lines(1)
                        );
                    }
                    let err = n.replica.last_error().unwrap_or("");
                    assert!(
                        err.contains("split brain") || err.contains("unrelated data"),
                        "node {i}: {err:?} (cut {cut}, bitmap {bitmap_resync})\n{}\n---\n{}",
                        s.lines(0),
                        s.lines(1)
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------ regressions
    // Cases the property tests once found, replayed exactly.

    #[allow(clippy::too_many_arguments)]
    fn replay(
        seed: u64,
        drop: u32,
        duplicate: u32,
        reorder: u32,
        delay: u64,
        steps: usize,
        write_pm: u32,
        crash_at: usize,
        crash_pm: u32,
    ) -> Chaos {
        Chaos {
            seed,
            faults: NetFaults { drop, duplicate, reorder, delay_min_ms: 0, delay_max_ms: delay },
            steps,
            write_pm,
            partition_pm: 0,
            crash_secondary_pm: crash_pm,
            crash_primary_at: crash_at,
            silent_crash: false,
        }
    }

    /// A write between sending our generation ids and deciding changed the
    /// ids: the two sides decided differently and the secondary applied a
    /// resync batch while claiming UpToDate.
    #[test]
    fn regression_both_sides_decide_on_the_exchanged_generation_ids() {
        let c = replay(16271426011469291802, 1, 1, 1, 7, 88, 135, 88, 4);
        let (mut s, _) = chaotic_run(&c, Protocol::A);
        heal_and_check(&mut s);
    }

    /// The source crashed after the last resync ack but before the target
    /// saw SyncDone: equal generations, one side Inconsistent, must resync
    /// (possibly nothing) instead of staying Inconsistent forever.
    #[test]
    fn regression_a_target_that_missed_sync_done_finishes_on_reconnect() {
        let c = replay(15771048373086574200, 2, 1, 1, 11, 73, 125, 72, 0);
        let (mut s, _) = chaotic_run(&c, Protocol::C);
        heal_and_check(&mut s);
    }

    // -------------------------------------------------------------- scenarios

    #[test]
    fn a_silent_partition_is_detected_by_timeout() {
        let mut s = connected_pair(3, Protocol::C);
        let t0 = s.now;
        s.partition(true);
        let timeout = s.nodes[0].cfg.timeout_ms;
        let mut seen = [None, None];
        while s.now < t0 + 3 * timeout {
            s.tick();
            for (i, n) in s.nodes.iter().enumerate() {
                if seen[i].is_none() && n.replica.connection() != ConnState::Connected {
                    seen[i] = Some(s.now - t0);
                }
            }
        }
        for (i, t) in seen.iter().enumerate() {
            let t = t.expect("timeout not detected");
            assert!(t <= timeout + 2 * sim::TICK_MS, "node {i} noticed after {t} ms");
            assert!(s.lines(i).contains("connection:Timeout"), "{}", s.lines(i));
        }
        // A stopped process (SIGSTOP: no FIN, no frames) is detected the same way.
        s.partition(false);
        assert!(s.settle(5_000));
        s.crash(1, true);
        let t1 = s.now;
        s.run_ms(timeout + 3 * sim::TICK_MS);
        assert!(s.nodes[0].lines.iter().any(|l| l.contains("connection:Timeout")));
        assert!(s.now - t1 <= timeout + 3 * sim::TICK_MS);
    }

    fn partitioned_with_dirty(seed: u64, blocks: u64) -> Sim {
        let mut s = connected_pair(seed, Protocol::C);
        s.partition(true);
        for b in 0..blocks {
            s.write(0, &[(key(1, b), W::Data(10_000 + b as u32))]);
        }
        s.run_ms(1_000);
        // ~40 blocks/s: slow enough to interrupt.
        s.admin(0, AdminCommand::SetRate { bytes_per_s: 20_000 });
        s
    }

    #[test]
    fn an_interrupted_resync_resumes_without_starting_over() {
        let blocks = 240;
        let mut s = partitioned_with_dirty(4, blocks);
        s.partition(false);
        while s.nodes[1].engine.resync_updates_applied < blocks / 2 {
            s.tick();
            assert!(s.now < 120_000, "resync made no progress");
        }
        let st = s.nodes[1].replica.status();
        assert_eq!(st.replication, ReplState::SyncTarget);
        assert_eq!(st.disk, DiskState::Inconsistent);
        let done = s.nodes[0].replica.status().done.expect("done while syncing");
        assert!(done > 30.0 && done < 80.0, "done {done}");
        assert!(s.nodes[0].replica.status().eta.is_some());
        // Interrupt: partition, then heal.
        s.partition(true);
        s.run_ms(2_000);
        assert_eq!(s.nodes[1].replica.disk(), DiskState::Inconsistent);
        assert!(s.nodes[1].replica.role() == Role::Secondary);
        // An Inconsistent node cannot be promoted without force.
        s.admin(1, AdminCommand::Promote { force: false });
        assert!(s.nodes[1].refusals.last().unwrap().contains("not UpToDate"), "{:?}", s.nodes[1].refusals);
        s.partition(false);
        s.admin(0, AdminCommand::SetRate { bytes_per_s: 0 });
        assert!(s.settle(60_000), "{}\n---\n{}", s.lines(0), s.lines(1));
        assert_identical(&s);
        let applied = s.nodes[1].engine.resync_updates_applied;
        let slack = (s.nodes[0].cfg.resync_window * s.nodes[0].cfg.resync_batch_blocks) as u64;
        assert!(applied <= blocks + slack, "resync sent {applied} updates for {blocks} blocks");
    }

    #[test]
    fn a_resync_interrupted_by_a_source_crash_resumes_from_the_persisted_dirty_set() {
        let blocks = 240;
        let mut s = partitioned_with_dirty(5, blocks);
        s.partition(false);
        while s.nodes[1].engine.resync_updates_applied < blocks / 2 {
            s.tick();
            assert!(s.now < 120_000);
        }
        s.crash(0, false);
        s.run_ms(500);
        s.restart(0);
        assert!(s.settle(60_000), "{}\n---\n{}", s.lines(0), s.lines(1));
        assert_identical(&s);
        let applied = s.nodes[1].engine.resync_updates_applied;
        let slack = (s.nodes[0].cfg.resync_window * s.nodes[0].cfg.resync_batch_blocks) as u64;
        assert!(applied <= blocks + slack, "resync sent {applied} updates for {blocks} blocks");
        assert_eq!(s.nodes[0].replica.role(), Role::Primary, "re-promoted once UpToDate");
    }

    #[test]
    fn pause_sync_stops_progress_and_resume_finishes_it() {
        let mut s = partitioned_with_dirty(6, 100);
        s.admin(0, AdminCommand::SetRate { bytes_per_s: 0 });
        s.admin(0, AdminCommand::PauseSync);
        s.partition(false);
        s.run_ms(2_000);
        assert_eq!(s.nodes[0].replica.replication(), ReplState::PausedSyncS);
        assert_eq!(s.nodes[1].replica.replication(), ReplState::PausedSyncT);
        assert_eq!(s.nodes[0].replica.status().resync_suspended, "user");
        let before = s.nodes[1].engine.resync_updates_applied;
        s.run_ms(1_000);
        assert_eq!(s.nodes[1].engine.resync_updates_applied, before);
        s.admin(0, AdminCommand::ResumeSync);
        assert!(s.settle(30_000));
        assert_identical(&s);
    }

    #[test]
    fn verify_reports_a_flipped_block_as_out_of_sync_without_repairing_it() {
        let mut s = connected_pair(7, Protocol::C);
        for b in 0..100 {
            s.write(0, &[(key(1, b), W::Data(b as u32))]);
        }
        assert!(s.settle(5_000));
        // Flip one block behind the protocol's back.
        s.nodes[1].engine.map.insert(key(1, 70), MapValue::Data(content_hash(3)));
        s.admin(0, AdminCommand::Verify);
        s.run_ms(200);
        assert!(s.lines(0).contains("ov-mismatches:1"), "{}", s.lines(0));
        assert!(s.nodes[0].replica.status().out_of_sync > 0);
        assert_ne!(s.nodes[0].engine.map, s.nodes[1].engine.map, "verify must not repair silently");
        // A reconnect resyncs the marked range.
        s.admin(0, AdminCommand::Disconnect);
        s.admin(0, AdminCommand::Connect);
        assert!(s.settle(10_000));
        assert_identical(&s);
    }

    #[test]
    fn promotion_of_a_non_uptodate_secondary_needs_force() {
        let mut s = connected_pair(8, Protocol::C);
        s.admin(1, AdminCommand::Disconnect);
        assert_eq!(s.nodes[1].replica.disk(), DiskState::Outdated);
        s.admin(1, AdminCommand::Promote { force: false });
        assert!(s.nodes[1].refusals.last().unwrap().contains("Outdated"));
        assert_eq!(s.nodes[1].replica.role(), Role::Secondary);
        s.admin(1, AdminCommand::Promote { force: true });
        assert_eq!(s.nodes[1].replica.role(), Role::Primary);
    }

    #[test]
    fn a_primary_crash_with_writes_in_flight_is_resynced_from_its_dirty_set() {
        let mut s = connected_pair(9, Protocol::A);
        s.faults = NetFaults { delay_min_ms: 40, delay_max_ms: 60, ..Default::default() };
        for b in 0..30 {
            s.write(0, &[(key(1, b), W::Data(b as u32 + 50))]);
        }
        // Protocol A: flushes complete at once, the data is still in flight.
        let id = s.flush(0).unwrap();
        assert!(s.nodes[0].flushes_done.iter().any(|f| f.0 == id && !f.1));
        s.crash(0, true);
        s.faults = NetFaults::default();
        s.run_ms(1_000);
        s.restart(0);
        assert!(s.settle(20_000), "{}\n---\n{}", s.lines(0), s.lines(1));
        assert_identical(&s);
    }
}
