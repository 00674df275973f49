//! Progress bars for long engine work (import, export, gc), drawn on stderr
//! with indicatif only when a person is watching (stdout is a terminal and
//! the command runs locally, not inside the mount daemon).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A `progress(done, total)` sink for the engine: a bar, or nothing.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar counting bytes (with rate and ETA).
    pub fn bytes(enabled: bool, what: &str) -> Progress {
        Progress::with_template(enabled, what, "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    }

    /// A bar counting items (packs, chunks).
    pub fn count(enabled: bool, what: &str) -> Progress {
        Progress::with_template(enabled, what, "{msg} [{bar:40}] {pos}/{len} eta {eta}")
    }

    fn with_template(enabled: bool, what: &str, template: &str) -> Progress {
        if !enabled {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(template)
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(what.to_string());
        Progress(Some(bar))
    }

    pub fn update(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    /// Remove the bar, so the command's own output starts on a clean line.
    pub fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}
