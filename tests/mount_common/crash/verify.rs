//! Judge a volume read back after a crash against the writer's log
//! (`writer.rs` describes both).
//!
//! For every block `b` of the file, with `ops(b)` the ops of this iteration
//! that covered `b` (in issue order, all from one thread) and `base(b)` what
//! `b` held when the iteration started (read back and verified after the
//! previous crash):
//!
//! * **intact** (every policy): `b` holds zeros or a valid block, and that
//!   content is `base(b)` or one of `ops(b)`: never torn, mixed, misplaced
//!   or unknown bytes.
//! * **acknowledged** (`sync`; and every policy under `kill -9`, since
//!   FORMAT.md's "after kill -9" column promises it for async too): let `a`
//!   be the last op of `ops(b)` whose `A` line is in the log; `b` holds
//!   `a`'s content or that of a later op of `ops(b)` (which was in flight
//!   and may have landed). With no acknowledged op: `base(b)` or any op.
//! * **flushed** (SPEC §4 for `async`): the same with `a` = the last op of
//!   `ops(b)` acknowledged before the start (`S` line) of some fsync that
//!   completed (`D` line).
//!
//! Ops are compared by content, so a dup block written by an old op and
//! again by a new one counts as the new one: the bytes are the same.
//!
//! The verdict counts how many blocks each promise actually constrained,
//! so a run where nothing was acknowledged or flushed cannot pass
//! unnoticed.

use super::writer::{BLOCK, Content, parse};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Op {
    pub id: u64,
    pub first: u64,
    pub blocks: u64,
    pub kind: char,
    pub key: u64,
    /// Log line of the acknowledgement.
    pub ack_line: Option<usize>,
    /// errno and time of a failure.
    pub error: Option<(i32, u64)>,
}

impl Op {
    pub fn content(&self) -> Content {
        match self.kind {
            'u' => Content::Unique(self.id),
            'd' => Content::Dup(self.key),
            _ => Content::Zero,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Fsync {
    pub start_line: usize,
    pub done_line: Option<usize>,
    pub error: Option<(i32, u64)>,
}

#[derive(Debug, Default)]
pub struct Log {
    pub ops: BTreeMap<u64, Op>,
    pub fsyncs: BTreeMap<u64, Fsync>,
    pub end: Option<String>,
    /// errno and time of a failed open of the volume.
    pub open_error: Option<(i32, u64)>,
    /// Time of the first acknowledgement and of the first completed fsync.
    pub first_ack_ns: Option<u64>,
    pub first_fsync_ns: Option<u64>,
}

impl Log {
    /// Failures (op or fsync) that happened before `t_ns`.
    pub fn errors_before(&self, t_ns: u64) -> Vec<String> {
        let mut v = Vec::new();
        if let Some((errno, t)) = self.open_error
            && t < t_ns
        {
            v.push(format!("opening the volume failed with errno {errno} before the kill"));
        }
        for o in self.ops.values() {
            if let Some((errno, t)) = o.error
                && t < t_ns
            {
                v.push(format!(
                    "op {} ({} block(s) at {}) failed with errno {errno} before the kill",
                    o.id, o.blocks, o.first
                ));
            }
        }
        for (k, f) in &self.fsyncs {
            if let Some((errno, t)) = f.error
                && t < t_ns
            {
                v.push(format!("fsync {k} failed with errno {errno} before the kill"));
            }
        }
        v
    }

    /// errno → count of the failures (after the kill these show how the
    /// writer saw the crash).
    pub fn error_counts(&self) -> BTreeMap<i32, u64> {
        let mut m = BTreeMap::new();
        for e in self.ops.values().filter_map(|o| o.error).chain(self.fsyncs.values().filter_map(|f| f.error)) {
            *m.entry(e.0).or_default() += 1;
        }
        m
    }
}

/// Parse the writer's log. A last line without a newline (a writer killed
/// mid-line) is ignored.
pub fn parse_log(text: &str) -> Result<Log, String> {
    let mut log = Log::default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for (ln, line) in complete.lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> Result<u64, String> {
            f.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| format!("log line {}: bad field {i}: {line:?}", ln + 1))
        };
        match f[0] {
            "W" => {
                let id = num(1)?;
                let op = Op {
                    id,
                    first: num(3)?,
                    blocks: num(4)?,
                    kind: f.get(5).and_then(|s| s.chars().next()).ok_or("kind")?,
                    key: num(6)?,
                    ack_line: None,
                    error: None,
                };
                if log.ops.insert(id, op).is_some() {
                    return Err(format!("log line {}: op {id} issued twice", ln + 1));
                }
            }
            "A" => {
                let t = num(2)?;
                let op =
                    log.ops.get_mut(&num(1)?).ok_or_else(|| format!("log line {}: ack of an unknown op", ln + 1))?;
                op.ack_line = Some(ln);
                log.first_ack_ns.get_or_insert(t);
            }
            "E" => {
                let e = (num(2)? as i32, num(3)?);
                log.ops
                    .get_mut(&num(1)?)
                    .ok_or_else(|| format!("log line {}: error of an unknown op", ln + 1))?
                    .error = Some(e);
            }
            "S" => {
                log.fsyncs.insert(num(1)?, Fsync { start_line: ln, ..Default::default() });
            }
            "D" => {
                let t = num(2)?;
                log.fsyncs.get_mut(&num(1)?).ok_or("completion of an unknown fsync")?.done_line = Some(ln);
                log.first_fsync_ns.get_or_insert(t);
            }
            "X" => {
                let e = (num(2)? as i32, num(3)?);
                log.fsyncs.get_mut(&num(1)?).ok_or("failure of an unknown fsync")?.error = Some(e);
            }
            "O" => log.open_error = Some((num(1)? as i32, num(2)?)),
            "END" => log.end = Some(f[1..].join(" ")),
            _ => return Err(format!("log line {}: unknown record {line:?}", ln + 1)),
        }
    }
    Ok(log)
}

/// Which promise a policy makes after `kill -9`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promise {
    /// Every acknowledged write is there.
    Acknowledged,
    /// Every write acknowledged before a completed fsync is there.
    Flushed,
    /// Only: nothing torn or unknown.
    Intact,
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub blocks: u64,
    /// Blocks whose required content (acknowledged promise) is an op of
    /// this iteration: the checks that had teeth.
    pub constrained_ack: u64,
    pub constrained_flush: u64,
    pub ops: u64,
    pub acked_ops: u64,
    /// Issued but never acknowledged (in flight at the crash, or failed).
    pub unacked_ops: u64,
    /// Of those, how many blocks hold the new data anyway.
    pub unacked_landed: u64,
    pub fsyncs_completed: u64,
    pub bad_blocks: u64,
    pub ack_losses: u64,
    pub flush_losses: u64,
    /// The first problems found, for the report.
    pub problems: Vec<String>,
    /// What each block holds now: the next iteration's baseline.
    pub now: Vec<Content>,
}

impl Verdict {
    /// Whether `promise` holds (and nothing is torn or unknown).
    pub fn holds(&self, promise: Promise) -> bool {
        self.bad_blocks == 0
            && match promise {
                Promise::Acknowledged => self.ack_losses == 0 && self.flush_losses == 0,
                Promise::Flushed => self.flush_losses == 0,
                Promise::Intact => true,
            }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} blocks: {} ops ({} acknowledged, {} unacknowledged, {} of their blocks landed), {} fsyncs completed; \
             {} blocks constrained by acknowledged writes, {} by flushed writes; {} torn/unknown, {} acknowledged writes lost, {} flushed writes lost",
            self.blocks,
            self.ops,
            self.acked_ops,
            self.unacked_ops,
            self.unacked_landed,
            self.fsyncs_completed,
            self.constrained_ack,
            self.constrained_flush,
            self.bad_blocks,
            self.ack_losses,
            self.flush_losses
        )
    }
}

/// Judge `data` (the whole file as read back) against `log` and `base`.
pub fn verify(log: &Log, base: &[Content], data: &[u8]) -> Verdict {
    let nblocks = base.len();
    assert_eq!(data.len(), nblocks * BLOCK, "the file has the wrong size");
    let mut v = Verdict { blocks: nblocks as u64, ops: log.ops.len() as u64, ..Default::default() };
    v.acked_ops = log.ops.values().filter(|o| o.ack_line.is_some()).count() as u64;
    v.unacked_ops = v.ops - v.acked_ops;
    v.fsyncs_completed = log.fsyncs.values().filter(|f| f.done_line.is_some()).count() as u64;
    // The start line of the latest fsync that completed: every write
    // acknowledged before it must be durable.
    let flush_cut = log.fsyncs.values().filter(|f| f.done_line.is_some()).map(|f| f.start_line).max();
    // ops per block, in issue order.
    let mut per_block: Vec<Vec<&Op>> = vec![Vec::new(); nblocks];
    for o in log.ops.values() {
        for b in o.first..o.first + o.blocks {
            if let Some(slot) = per_block.get_mut(b as usize) {
                slot.push(o);
            }
        }
    }
    let problem = |v: &mut Verdict, s: String| {
        if v.problems.len() < 20 {
            v.problems.push(s);
        }
    };
    for b in 0..nblocks {
        let ops = &per_block[b];
        let found = parse(b as u64, &data[b * BLOCK..(b + 1) * BLOCK]);
        let now = match found {
            Ok(c) => c,
            Err(why) => {
                v.bad_blocks += 1;
                problem(&mut v, format!("block {b} (offset {}): {why}", b * BLOCK));
                v.now.push(Content::Zero);
                continue;
            }
        };
        v.now.push(now);
        let possible = std::iter::once(base[b]).chain(ops.iter().map(|o| o.content()));
        if !possible.clone().any(|c| c == now) {
            v.bad_blocks += 1;
            problem(
                &mut v,
                format!(
                    "block {b}: holds {now}, which was never written there (expected {} or an op of this run)",
                    base[b]
                ),
            );
            continue;
        }
        // Allowed contents under a cut: the last op acknowledged before the
        // cut, and every op issued after it.
        let allowed_after = |last: Option<usize>| -> Vec<Content> {
            match last {
                Some(i) => ops[i..].iter().map(|o| o.content()).collect(),
                None => possible.clone().collect(),
            }
        };
        let last_acked = ops.iter().rposition(|o| o.ack_line.is_some());
        if let Some(i) = last_acked {
            if ops[i].content() != base[b] {
                v.constrained_ack += 1;
            }
            if !allowed_after(Some(i)).contains(&now) {
                v.ack_losses += 1;
                problem(
                    &mut v,
                    format!(
                        "block {b}: acknowledged op {} ({} block(s) at {}) is lost: the block holds {now}",
                        ops[i].id, ops[i].blocks, ops[i].first
                    ),
                );
            }
        }
        let last_flushed = flush_cut.and_then(|cut| ops.iter().rposition(|o| o.ack_line.is_some_and(|l| l < cut)));
        if let Some(i) = last_flushed {
            if ops[i].content() != base[b] {
                v.constrained_flush += 1;
            }
            if !allowed_after(Some(i)).contains(&now) {
                v.flush_losses += 1;
                problem(
                    &mut v,
                    format!(
                        "block {b}: op {} acknowledged before a completed fsync is lost: the block holds {now}",
                        ops[i].id
                    ),
                );
            }
        }
        if let Some(last) = ops.last()
            && last.ack_line.is_none()
            && now == last.content()
            && now != base[b]
        {
            v.unacked_landed += 1;
        }
    }
    v
}
