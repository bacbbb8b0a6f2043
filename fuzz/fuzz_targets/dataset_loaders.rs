//! Any bytes as a dataset file users bring: the first byte picks the loader (GSM8K JSONL,
//! generic JSONL, HotpotQA JSON, a passage corpus), the rest is the file. A loader must never
//! panic, and every record it loads or skips is accounted for: for the line-based formats, no
//! line is both loaded and skipped, and none beyond the file's end is named.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasks::datasets;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let lines = text.lines().count();
    match which % 4 {
        0 | 1 => {
            let loaded = if which % 4 == 0 {
                datasets::load_gsm8k(&text)
            } else {
                datasets::load_generic_jsonl(&text)
            };
            assert!(loaded.examples.len() + loaded.skipped.len() <= lines.max(1));
            for bad in &loaded.skipped {
                assert!(bad.position <= lines.max(1), "{bad:?} beyond {lines} lines");
            }
        }
        2 => {
            let _ = datasets::load_hotpotqa(&text);
        }
        _ => {
            let corpus = datasets::load_corpus(&text);
            assert!(corpus.passages.len() <= lines.max(1));
        }
    }
});
