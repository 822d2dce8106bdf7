//! Fuzz the QMP reply framing and parser with arbitrary bytes from QEMU or a
//! guest agent: the bytes are fed in random-sized chunks to a small-capped
//! line buffer, every line is classified, and the guest-agent delimiter skip
//! is exercised. Nothing may panic; a line longer than the cap must be
//! refused; every classified command reply re-encodes to JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayos_qmp::wire::{LineBuffer, Message, WireError, encode_command, parse_message};

const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let mut buf = LineBuffer::new(CAP);
    let mut delimited = split & 1 == 1;
    for piece in rest.chunks(chunk) {
        buf.feed(piece);
        if delimited {
            delimited = !buf.skip_past_delimiter();
        }
        loop {
            match buf.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= CAP);
                    if let Ok(Message::Return { value, id }) = parse_message(&line) {
                        let _ = encode_command("x", Some(&value), id.as_ref());
                    }
                }
                Ok(None) => break,
                Err(WireError::LineTooLong { .. }) => return,
                Err(e) => panic!("next_line returned {e}"),
            }
        }
    }
});
