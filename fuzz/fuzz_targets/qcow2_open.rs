//! Opens arbitrary bytes as a qcow2 image held in memory, maps the whole
//! virtual disk and reads every data extent. Any panic, hang or unbounded
//! allocation is a bug: the parser must turn every input into an image or
//! an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    strata::qcow2::fuzz_open_map_read(data);
});
