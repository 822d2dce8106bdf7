//! Fuzz the answer-file parser, and planning from whatever it accepts
//! against the built-in sample disk: nothing may panic; every accepted plan
//! must pass validation and survive a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayos_install::answers::Answers;
use rayos_install::plan::{self, Facts, Plan, PlanOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(answers) = Answers::parse("fuzz.toml", text) else {
        return;
    };
    let disk = rayos_install::sample::sample_disk();
    if let Ok(p) = plan::make_plan(&disk, &answers, &Facts::default(), &PlanOptions::default()) {
        plan::validate(&p).expect("make_plan returned an invalid plan");
        let back: Plan = serde_json::from_str(&p.to_json()).expect("plan JSON does not parse");
        assert_eq!(back, p);
    }
});
