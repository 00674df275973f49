//! The hidden `strata man OUTDIR`: write one man page per command, generated
//! from the clap definitions (`strata.1`, `strata-volume-create.1`, ...), so
//! the pages cannot drift from the flags. The pages are committed in `man/`;
//! `tests/cli_man.rs` fails when they are stale.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    pub outdir: PathBuf,
}

pub fn run(a: &ManArgs, out: &mut dyn Write) -> Result<()> {
    std::fs::create_dir_all(&a.outdir).with_context(|| format!("cannot create {}", a.outdir.display()))?;
    // Built once so every subcommand knows its full name ("strata-volume-create")
    // and inherits the global --store.
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let source = format!("strata {}", env!("CARGO_PKG_VERSION"));
    write_pages(&cmd, &a.outdir, &source)
        .with_context(|| format!("cannot write man pages into {}", a.outdir.display()))?;
    writeln!(out, "Wrote man pages into {}", a.outdir.display())?;
    Ok(())
}

fn write_pages(cmd: &clap::Command, dir: &Path, source: &str) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, source)?;
    }
    let top = cmd.get_bin_name() == Some("strata") || cmd.get_name() == "strata";
    // The top page gets real EXIT STATUS and ENVIRONMENT sections instead of
    // the --help epilogue, which clap_mangen would print as "EXTRA".
    let page_cmd = if top { cmd.clone().after_long_help(None::<&str>) } else { cmd.clone() };
    let man = clap_mangen::Man::new(page_cmd).source(source).manual("strata manual");
    let mut page = Vec::new();
    man.render(&mut page)?;
    if top {
        page.extend_from_slice(top_page_sections().as_bytes());
    }
    std::fs::write(dir.join(man.get_filename()), page)
}

/// EXIT STATUS, ENVIRONMENT and FILES for `strata(1)`, in roff.
fn top_page_sections() -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in super::EXIT_CODES {
        roff.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", code.code(), meaning.replace('-', "\\-")));
    }
    roff.push_str(
        ".SH ENVIRONMENT\n.TP\n\\fBSTRATA_STORE\\fR\n\
         The store directory when \\fB\\-\\-store\\fR is not given (default /var/lib/strata).\n\
         .TP\n\\fBRUST_LOG\\fR\n\
         Log filter for messages on standard error (default warn), e.g. RUST_LOG=debug.\n\
         .SH \"SEE ALSO\"\n\
         README.md and FORMAT.md in the strata sources.\n",
    );
    roff
}
