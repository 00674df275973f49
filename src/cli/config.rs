//! `strata config get|set`: settings of the store that can change after
//! `init`. One key so far: `write-policy` (SPEC §4: set at init and
//! changeable). Changing it takes effect at once, also while mounted.

use std::io::Write;

use anyhow::Result;

use super::exit::{self, ExitCode};
use super::output::Listing;
use crate::volume::{Engine, WritePolicy};

/// The keys `config` knows, for messages.
const KEYS: &str = "write-policy";

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a setting, or all settings.
    Get(ConfigGetArgs),
    /// Change a setting.
    #[command(long_about = "Change a setting of the store. Keys:\n  \
        write-policy  sync | async | async-unsafe | auto (see `strata init --help`); \
        moving to a stricter policy first makes every pending write durable.")]
    Set(ConfigSetArgs),
}

#[derive(clap::Args, Debug)]
pub struct ConfigGetArgs {
    /// The setting (write-policy); all settings when left out.
    pub key: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ConfigSetArgs {
    /// The setting (write-policy).
    pub key: String,
    pub value: String,
}

pub fn run(engine: &Engine, cmd: &ConfigCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        ConfigCommand::Get(a) => {
            let policy = engine.write_policy().as_str();
            match &a.key {
                Some(key) => {
                    check_key(key)?;
                    writeln!(out, "{policy}")?;
                }
                None => {
                    let mut l = Listing::new();
                    l.item("write-policy", policy);
                    l.write(out, 0)?;
                }
            }
            Ok(())
        }
        ConfigCommand::Set(a) => {
            check_key(&a.key)?;
            let policy: WritePolicy = a.value.parse().map_err(|e: String| {
                exit::fail(
                    ExitCode::InvalidArgument,
                    format!("cannot set write-policy: {e}"),
                )
            })?;
            let (effective, why) = engine
                .set_write_policy(policy)
                .map_err(|e| exit::engine("cannot set write-policy", e))?;
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            writeln!(
                out,
                "write-policy is {}; in effect: {}{why}",
                policy.as_str(),
                effective.as_str()
            )?;
            Ok(())
        }
    }
}

fn check_key(key: &str) -> Result<()> {
    if key == "write-policy" {
        return Ok(());
    }
    Err(exit::fail(
        ExitCode::NotFound,
        format!("unknown setting {key:?}: the settings are {KEYS}"),
    ))
}
