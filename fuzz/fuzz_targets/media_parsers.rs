//! The rayos-image parsers of untrusted bytes: OVMF VARS stores (read after
//! a guest wrote them), PE/UKI headers and bzImage setup headers (read from
//! disks). None may panic or loop on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rayos_image::ovmf_vars::boot_vars(data);
    let _ = rayos_image::uki::sections_of(data);
    let _ = rayos_image::uki::kernel_release(data);
});
