//! RFB (VNC) server bytes as the presenter's client parses them: handshake,
//! ServerInit, framebuffer updates (raw, CopyRect, DesktopSize, QEMU
//! pseudo-encodings), bell, cut text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rayos_present::rfb::fuzz_session(data);
});
