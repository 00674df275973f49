//! The packer: background compression of blocks whose compression was
//! deferred (SPEC §1 "Compression"; VDO's packer likewise compresses after
//! the write is acknowledged).
//!
//! With `compression = deferred` (the default for new stores, `strata config
//! set compression`), a write stores a new unique block raw, flagged
//! `FLAG_DEFERRED` — hashing, the dedup lookup and the BLAKE3 checksum still
//! happen inline, only zstd is skipped. The packer later compacts every pack
//! holding such records exactly as GC does (`gc.rs`): each live record is
//! moved to the active pack, compressed on the way (or kept raw, unflagged,
//! if zstd does not save 1/16), journaled as a `ChunkPut` with the same
//! chunk id, and the old pack is deleted only after a durable checkpoint.
//! So the packer adds no new crash point: it is GC with a different victim
//! list, and `strata gc` does its work too.
//!
//! The packer is a thread of the mount daemon (`Engine::start_packer`) at the
//! lowest CPU priority (SCHED_IDLE). Every `PACKER_TICK` in which no new
//! chunk was stored it seals the active pack and compacts the packs that
//! hold deferred records, stopping between packs as soon as new chunks
//! arrive; so foreground writes keep the CPUs and the disk, and a quiet
//! store ends up fully compressed. Under writes that never pause it starts
//! anyway once `PACKER_MAX_BACKLOG_PACKS` packs are waiting, which bounds
//! the extra space raw blocks take. Reads of a deferred record are plain
//! raw reads.

use super::{Engine, Result, lock};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the packer looks for work.
pub const PACKER_TICK: Duration = Duration::from_secs(1);
/// Past this many packs awaiting it (4 GiB of raw data), the packer works
/// even while writes go on, so the space they take stays bounded.
pub const PACKER_MAX_BACKLOG_PACKS: u64 = 32;

/// Run the calling thread at the lowest CPU priority: SCHED_IDLE (it runs
/// only when no normal thread wants the CPU), or nice 19 where that is
/// refused.
fn idle_priority() {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes only the calling thread's own scheduling policy.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) } != 0 {
        // SAFETY: setpriority on this thread's own id.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    }
}

/// How new unique blocks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// zstd in the write path: stored compressed before the write returns.
    Inline,
    /// Stored raw by the write; the background packer compresses later.
    Deferred,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Inline => "inline",
            Compression::Deferred => "deferred",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "inline" => Ok(Compression::Inline),
            "deferred" => Ok(Compression::Deferred),
            _ => Err(format!("unknown compression mode {s:?}: use inline or deferred")),
        }
    }
}

pub(crate) struct PackerHandle {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Engine {
    /// The compression mode (`strata config get compression`).
    pub fn compression(&self) -> Compression {
        if lock(&self.sb).deferred_compression { Compression::Deferred } else { Compression::Inline }
    }

    /// Change the compression mode; takes effect for the next write. Blocks
    /// already stored raw are still compressed by the packer or `gc`.
    pub fn set_compression(&self, c: Compression) -> Result<()> {
        self.check_writable()?;
        let mut sb = lock(&self.sb);
        sb.deferred_compression = c == Compression::Deferred;
        sb.write(&self.path.join(super::Paths::SUPERBLOCK)).map_err(super::store_err("writing the superblock"))?;
        self.store.set_deferred(c == Compression::Deferred);
        Ok(())
    }

    /// Compress deferred records now: compact every sealed pack holding
    /// any (sealing the active pack first when `seal` is set). `stop()` is
    /// polled between packs. Returns the chunks compressed.
    pub fn pack_deferred(&self, seal: bool, stop: &dyn Fn() -> bool) -> Result<u64> {
        Ok(self.pack_deferred_skipping(seal, stop, &mut Vec::new())?.chunks_compressed)
    }

    /// [`pack_deferred`](Self::pack_deferred), leaving out the packs in
    /// `skip` and adding to it every pack found holding a damaged record
    /// (the background packer does not retry those until restart).
    fn pack_deferred_skipping(
        &self,
        seal: bool,
        stop: &dyn Fn() -> bool,
        skip: &mut Vec<u32>,
    ) -> Result<super::gc::GcReport> {
        self.check_writable()?;
        let mut rep = super::gc::GcReport::default();
        if self.store.is_recovering() {
            return Ok(rep);
        }
        let _one = lock(&self.gc_lock);
        if seal && self.store.active_has_deferred() {
            self.store.seal_active()?;
        }
        let mut packs = self.store.packs_with_deferred().map_err(|e| self.on_write_error(e.into()))?;
        packs.retain(|p| !skip.contains(p));
        if packs.is_empty() {
            return Ok(rep);
        }
        let victims: Vec<_> = self.store.pack_usage().into_iter().filter(|u| packs.contains(&u.pack_id)).collect();
        self.compact(&victims, &mut rep, &mut |_, _| {}, stop)?;
        skip.extend(rep.damaged_packs.iter().copied());
        tracing::debug!(packs = victims.len(), compressed = rep.chunks_compressed, "packer pass");
        Ok(rep)
    }

    /// Start the background packer (the mount daemon does; short-lived CLI
    /// commands do not). Stopped by `close`. No-op on a read-only store.
    pub fn start_packer(&self) {
        if self.check_writable().is_err() {
            return;
        }
        let mut slot = lock(&self.packer);
        if slot.is_some() {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let me: Weak<Engine> = self.me.clone();
        let thread = std::thread::Builder::new()
            .name("strata-packer".into())
            .spawn(move || {
                idle_priority();
                let mut last_next_id = u64::MAX;
                let mut damaged: Vec<u32> = Vec::new();
                loop {
                    match rx.recv_timeout(PACKER_TICK) {
                        Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    }
                    let Some(e): Option<Arc<Engine>> = me.upgrade() else { return };
                    if e.closed.load(Ordering::Acquire) {
                        return;
                    }
                    // Work only while no new chunk is being stored (then
                    // the active pack can be sealed too), or when the
                    // backlog has grown past its bound; give way as soon as
                    // writes resume, unless over the bound.
                    let next = e.store.next_id();
                    let idle = next == last_next_id;
                    last_next_id = next;
                    let over = || e.store.deferred_pack_count() >= PACKER_MAX_BACKLOG_PACKS;
                    if !idle && !over() {
                        continue;
                    }
                    let stopping = || !rx.is_empty() || (e.store.next_id() != next && !over());
                    if let Err(err) = e.pack_deferred_skipping(idle, &stopping, &mut damaged) {
                        tracing::error!(%err, "background packer failed");
                    }
                }
            })
            .expect("spawning the packer thread");
        *slot = Some(PackerHandle { stop: tx, thread });
    }

    pub(crate) fn stop_packer(&self) {
        if let Some(h) = lock(&self.packer).take() {
            let _ = h.stop.try_send(());
            // The packer may itself drop the last reference to the engine.
            if h.thread.thread().id() != std::thread::current().id() {
                let _ = h.thread.join();
            }
        }
    }
}
