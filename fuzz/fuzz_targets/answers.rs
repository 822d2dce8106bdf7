//! The answer-file parser on its own (the `plan` target plans from what it
//! accepts): any bytes give answers or an error, never a panic; an error's
//! line lies inside the file; accepted answers turn into a policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayos_install::answers::Answers;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Answers::parse("fuzz.toml", text) {
        Ok(answers) => {
            let _ = answers.policy.to_policy();
        }
        Err(e) => {
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            assert!(e.line <= lines, "error line {} of {lines}: {e}", e.line);
        }
    }
});
