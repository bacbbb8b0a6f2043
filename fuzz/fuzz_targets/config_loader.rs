//! Any bytes, read as text, as a run config file: the loader must never panic, and a config it
//! accepts must write out (`config.toml` of a run) as TOML it reads back to the same config.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use paretopo_service::RunConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    if let Ok(config) = RunConfig::from_text(&text, path, &[]) {
        let written = config.to_toml().expect("an accepted config writes out");
        let again = RunConfig::from_text(&written, path, &[]).expect("and reads back");
        assert_eq!(again, config);
    }
});
