//! The node's config.toml: TOML parse with unknown keys refused, then the cross-field checks.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use medmesh_node::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(Path::new("fuzz.toml"), text);
    }
});
