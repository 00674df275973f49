//! Generation identifiers (DRBD's data-generation UUIDs) and the decision
//! taken on connect. This is the highest-risk code of replication: it alone
//! decides which side's data survives.
//!
//! Each store keeps a *current* id, a *bitmap* id (the generation the dirty
//! set tracks changes against; 0 while the peer is in sync) and a short
//! *history*. A new current id starts on the first write after a Primary
//! loses its peer, or after a promotion while disconnected. When a resync
//! finishes, the target adopts the source's ids.
//!
//! Invariants: 0 is never a real generation (it means "just created"); the
//! decision is *antisymmetric* (if A decides SyncSource, B with the mirrored
//! inputs decides SyncTarget, and both see the same refusal), which a unit
//! test checks on a table of cases.
//!
//! Depends on nothing else in the crate.

/// The persistent generation ids of one store towards its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct GenIds {
    pub current: u64,
    pub bitmap: u64,
    pub history: [u64; 2],
}

impl GenIds {
    /// Start a new generation: the old current id becomes the bitmap id
    /// (what the dirty set is relative to) unless one is already tracked,
    /// in which case it goes to the history.
    pub fn new_current(&mut self, fresh: u64) {
        if self.bitmap == 0 {
            self.bitmap = self.current;
        } else {
            self.push_history(self.current);
        }
        self.current = fresh;
    }

    fn push_history(&mut self, id: u64) {
        if id != 0 && !self.history.contains(&id) {
            self.history = [id, self.history[0]];
        }
    }

    /// The source after a finished resync: the bitmap generation is history.
    pub fn finish_sync_as_source(&mut self) {
        let b = self.bitmap;
        self.push_history(b);
        self.bitmap = 0;
    }

    /// The target after a finished resync adopts the source's ids.
    pub fn adopt(&mut self, source: &GenIds) {
        *self = *source;
    }

    fn in_history(&self, id: u64) -> bool {
        id != 0 && self.history.contains(&id)
    }
}

/// What the connecting pair must do, from one side's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// In sync (up to leftover dirty bits, which the dirty-set rule handles).
    NoSync,
    /// I send; only the dirty sets need resyncing.
    SourceUseBitmap,
    /// I receive; only the dirty sets need resyncing.
    TargetUseBitmap,
    /// I send everything (the peer's bitmap is unusable).
    SourceFull,
    /// I receive everything.
    TargetFull,
    /// Both wrote since the last common generation: refuse.
    SplitBrain,
    /// No common generation at all: refuse (wrong peer or re-created store).
    Unrelated,
}

/// The inputs of the decision from one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub gis: GenIds,
    pub dirty_blocks: u64,
    pub primary: bool,
    pub discard_my_data: bool,
    /// The disk is Inconsistent (an unfinished resync target).
    pub inconsistent: bool,
    pub node_id: u64,
}

/// Decide, DRBD `drbd_uuid_compare` style, returning the decision and the
/// name of the rule that produced it (logged, as DRBD users paste it).
pub fn decide(me: &Side, peer: &Side) -> (Decision, &'static str) {
    use Decision::*;
    let (m, p) = (&me.gis, &peer.gis);
    let (d, rule) = if m.current == 0 && p.current == 0 {
        (NoSync, "both-just-created")
    } else if p.current == 0 {
        (SourceFull, "peer-just-created")
    } else if m.current == 0 {
        (TargetFull, "self-just-created")
    } else if m.current == p.current && me.inconsistent != peer.inconsistent {
        // A target that applied its whole resync but missed SyncDone: the
        // consistent side's dirty set still holds whatever was not
        // confirmed, so a bitmap resync (maybe empty) finishes the job.
        if me.inconsistent {
            (TargetUseBitmap, "current-equal-inconsistent-self")
        } else {
            (SourceUseBitmap, "current-equal-inconsistent-peer")
        }
    } else if m.current == p.current {
        // Same generation; leftover dirty bits (a crashed primary's
        // in-flight writes) decide the direction. The side holding bits
        // has data the other may lack.
        match (me.dirty_blocks > 0, peer.dirty_blocks > 0) {
            (false, false) => (NoSync, "current-equal"),
            (true, false) => (SourceUseBitmap, "current-equal-dirty-self"),
            (false, true) => (TargetUseBitmap, "current-equal-dirty-peer"),
            (true, true) => match (me.primary, peer.primary) {
                (true, false) => (SourceUseBitmap, "current-equal-primary-self"),
                (false, true) => (TargetUseBitmap, "current-equal-primary-peer"),
                // Both changed blocks in the same generation and neither is
                // clearly the writer: refuse rather than guess.
                _ => (SplitBrain, "current-equal-dirty-both"),
            },
        }
    } else if (m.bitmap != 0 && m.bitmap == p.current) != (p.bitmap != 0 && p.bitmap == m.current) {
        // Exactly one side descends from the other's current generation.
        // (Both at once is a cycle no real history produces: refused below
        // rather than letting both sides claim SyncSource.)
        if m.bitmap == p.current { (SourceUseBitmap, "bitmap-self") } else { (TargetUseBitmap, "bitmap-peer") }
    } else if p.in_history(m.current) != m.in_history(p.current) {
        if p.in_history(m.current) { (TargetFull, "history-peer") } else { (SourceFull, "history-self") }
    } else if m.bitmap != 0 && m.bitmap == p.current || p.in_history(m.current) {
        (SplitBrain, "generation-cycle")
    } else if m.bitmap != 0 && m.bitmap == p.bitmap {
        (SplitBrain, "bitmap-both")
    } else if [m.bitmap, m.history[0], m.history[1]].iter().any(|&x| x != 0 && (x == p.bitmap || p.in_history(x))) {
        (SplitBrain, "history-both")
    } else {
        (Unrelated, "unrelated-data")
    };
    // Manual split-brain resolution: the victim discards its changes and
    // becomes target of the union of both dirty sets (bitmap-both) or of
    // everything (history-both). Never applies to unrelated data.
    if d == SplitBrain {
        return match (me.discard_my_data, peer.discard_my_data) {
            (true, false) => {
                (if rule == "history-both" { TargetFull } else { TargetUseBitmap }, "discard-my-data-self")
            }
            (false, true) => {
                (if rule == "history-both" { SourceFull } else { SourceUseBitmap }, "discard-my-data-peer")
            }
            _ => (SplitBrain, rule),
        };
    }
    (d, rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(current: u64, bitmap: u64, history: [u64; 2], dirty: u64, primary: bool, discard: bool) -> Side {
        Side {
            gis: GenIds { current, bitmap, history },
            dirty_blocks: dirty,
            primary,
            discard_my_data: discard,
            inconsistent: false,
            node_id: 0,
        }
    }

    fn mirror(d: Decision) -> Decision {
        use Decision::*;
        match d {
            SourceUseBitmap => TargetUseBitmap,
            TargetUseBitmap => SourceUseBitmap,
            SourceFull => TargetFull,
            TargetFull => SourceFull,
            other => other,
        }
    }

    #[test]
    fn decision_table_matches_drbd_rules_and_is_antisymmetric() {
        use Decision::*;
        let cases = [
            (side(0, 0, [0; 2], 0, false, false), side(0, 0, [0; 2], 0, false, false), NoSync),
            (side(5, 0, [0; 2], 0, true, false), side(0, 0, [0; 2], 0, false, false), SourceFull),
            (side(5, 0, [0; 2], 0, true, false), side(5, 0, [0; 2], 0, false, false), NoSync),
            (side(5, 0, [0; 2], 3, false, false), side(5, 0, [0; 2], 0, false, false), SourceUseBitmap),
            (side(7, 5, [0; 2], 3, true, false), side(5, 0, [0; 2], 0, false, false), SourceUseBitmap),
            (side(7, 5, [0; 2], 3, true, false), side(9, 5, [0; 2], 1, true, false), SplitBrain),
            (side(7, 5, [0; 2], 3, true, false), side(9, 5, [0; 2], 1, false, true), SourceUseBitmap),
            (side(7, 0, [5, 0], 0, false, false), side(5, 0, [0; 2], 0, false, false), SourceFull),
            (side(7, 6, [5, 0], 0, false, false), side(8, 4, [5, 0], 0, false, false), SplitBrain),
            (side(7, 6, [0; 2], 0, false, false), side(8, 4, [3, 0], 0, false, false), Unrelated),
            (side(7, 6, [5, 0], 0, false, false), side(8, 4, [5, 0], 0, false, true), SourceFull),
        ];
        for (i, (a, b, want)) in cases.iter().enumerate() {
            let (da, _) = decide(a, b);
            let (db, _) = decide(b, a);
            assert_eq!(da, *want, "case {i}");
            assert_eq!(db, mirror(*want), "case {i} mirrored");
        }
    }

    proptest::proptest! {
        /// Whatever the inputs, the two sides reach mirrored decisions, so
        /// they never both send or both receive.
        #[test]
        fn decisions_are_antisymmetric(
            a in (0u64..4, 0u64..4, 0u64..4, 0u64..4, 0u64..3, proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY),
            b in (0u64..4, 0u64..4, 0u64..4, 0u64..4, 0u64..3, proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY),
        ) {
            let mk = |t: (u64, u64, u64, u64, u64, bool, bool, bool)| Side {
                gis: GenIds { current: t.0, bitmap: t.1, history: [t.2, t.3] },
                dirty_blocks: t.4,
                primary: t.5,
                discard_my_data: t.6,
                inconsistent: t.7,
                node_id: 0,
            };
            let (sa, sb) = (mk(a), mk(b));
            proptest::prop_assert_eq!(decide(&sa, &sb).0, mirror(decide(&sb, &sa).0));
        }
    }

    #[test]
    fn new_current_keeps_the_bitmap_id_of_the_first_divergence() {
        let mut g = GenIds { current: 5, ..Default::default() };
        g.new_current(7);
        assert_eq!((g.current, g.bitmap), (7, 5));
        g.new_current(9);
        assert_eq!((g.current, g.bitmap, g.history[0]), (9, 5, 7));
        g.finish_sync_as_source();
        assert_eq!((g.bitmap, g.history), (0, [5, 7]));
    }
}
