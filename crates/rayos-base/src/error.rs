//! Errors for people: an error and its `source()` chain on one line.
//!
//! Library errors carry their cause as `#[source]` and never repeat it in
//! their own message (STYLE.md), so the whole story is only told when the
//! chain is printed once, at the top: in a binary's exit message, an API
//! reply, a log line or the wizard's error screen. [`chain`] is that one
//! printer.
//!
//! Limits: one line, `": "` between the parts; a message that already
//! repeats its source shows it twice (fix the message, not this).

use std::error::Error;

/// "a: b: c" from an error and its sources.
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the policy")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn joins_every_source() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "cannot read the policy: disk on fire");
        assert_eq!(chain(&std::io::Error::other("alone")), "alone");
    }
}
