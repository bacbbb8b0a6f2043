//! Any bytes, read as text, through the tool-call parser: it must never panic, and a turn it
//! reads as a call must format back to a text it reads as the same call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tasks::format::{TurnAction, format_call, parse_turn};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let TurnAction::Call(call) = parse_turn(&text, &["calculator", "search"]) {
        assert_eq!(
            parse_turn(&format_call(&call), &["calculator", "search"]),
            TurnAction::Call(call)
        );
    }
});
