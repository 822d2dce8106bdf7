//! Reads UEFI boot entries out of an OVMF VARS file (the flash image QEMU
//! writes the guest's non-volatile variables to), so tests can check the
//! `Boot####` entry and `BootOrder` an installer wrote.
//!
//! Format (EDK2): a firmware volume header (its length at offset 0x30), a
//! 28-byte variable store header, then variables, each a 60-byte
//! authenticated header (`StartId` 0x55AA, `State`, ..., `NameSize`,
//! `DataSize`, vendor GUID), the UTF-16LE name and the data, 4-byte aligned.
//! A variable is live when its state is `VAR_ADDED` (0x3F) or added and in
//! delete transition (0x3E); older copies stay in the store as deleted.
//!
//! Limits: authenticated-variable stores only (OVMF's); the last live copy
//! of a name wins; the input is untrusted and every offset is checked.

use std::collections::BTreeMap;

use rayos_base::efivar;

const HEADER: usize = 60;
const STORE_HEADER: usize = 28;
const VAR_ADDED: u8 = 0x3f;
const VAR_ADDED_IN_DELETE: u8 = 0x3e;
/// EFI_GLOBAL_VARIABLE, as stored (mixed-endian GUID bytes).
const GLOBAL_GUID: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];

/// Why a file is not read as an OVMF variable store.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VarsError {
    /// The file is not an OVMF variable store; says why.
    #[error("not an OVMF variable store: {0}")]
    NotAStore(&'static str),
}

/// One `Boot####` load option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The option's number (`Boot0001` is 1).
    pub number: u16,
    /// Its description (what the boot menu shows).
    pub description: String,
    /// Whether `LOAD_OPTION_ACTIVE` is set.
    pub active: bool,
}

/// The boot configuration found in a VARS file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootVars {
    /// `BootOrder`: the options' numbers, in the order the firmware tries them.
    pub order: Vec<u16>,
    /// Every `Boot####` option found.
    pub entries: Vec<BootEntry>,
}

impl BootVars {
    /// The entry with this description, if any.
    pub fn find(&self, description: &str) -> Option<&BootEntry> {
        self.entries.iter().find(|e| e.description == description)
    }

    /// The entry `BootOrder` names first.
    pub fn first(&self) -> Option<&BootEntry> {
        let n = *self.order.first()?;
        self.entries.iter().find(|e| e.number == n)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn utf16(b: &[u8]) -> String {
    String::from_utf16_lossy(&efivar::utf16_units(b))
}

/// The live global variables of the store: name -> data.
pub fn global_variables(vars: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, VarsError> {
    if vars.get(0x28..0x2c) != Some(b"_FVH") {
        return Err(VarsError::NotAStore("no firmware volume signature"));
    }
    let fv_len = usize::from(u16_at(vars, 0x30).ok_or(VarsError::NotAStore("truncated"))?);
    let store_size =
        u32_at(vars, fv_len + 16).ok_or(VarsError::NotAStore("truncated store header"))? as usize;
    let end = fv_len.saturating_add(store_size).min(vars.len());
    let mut at = fv_len + STORE_HEADER;
    let mut out = BTreeMap::new();
    while at + HEADER <= end && u16_at(vars, at) == Some(0x55aa) {
        let state = vars[at + 2];
        let name_size = u32_at(vars, at + 36).unwrap_or(0) as usize;
        let data_size = u32_at(vars, at + 40).unwrap_or(0) as usize;
        let guid = &vars[at + 44..at + 60];
        let name_at = at + HEADER;
        let Some(data_at) = name_at.checked_add(name_size) else {
            break;
        };
        let Some(next) = data_at.checked_add(data_size) else {
            break;
        };
        if next > end {
            break;
        }
        if (state == VAR_ADDED || state == VAR_ADDED_IN_DELETE) && guid == GLOBAL_GUID {
            out.insert(utf16(&vars[name_at..data_at]), vars[data_at..next].to_vec());
        }
        at = next.div_ceil(4) * 4;
    }
    Ok(out)
}

/// `BootOrder` and every `Boot####` entry of the store.
pub fn boot_vars(vars: &[u8]) -> Result<BootVars, VarsError> {
    let globals = global_variables(vars)?;
    let mut bv = BootVars::default();
    if let Some(order) = globals.get("BootOrder") {
        bv.order = efivar::parse_boot_order(order);
    }
    for (name, data) in &globals {
        let Some(hex) = name.strip_prefix("Boot") else {
            continue;
        };
        if hex.len() != 4 {
            continue;
        }
        let Ok(number) = u16::from_str_radix(hex, 16) else {
            continue;
        };
        // EFI_LOAD_OPTION: u32 attributes, u16 file path length, description.
        let Some(attributes) = u32_at(data, 0) else {
            continue;
        };
        let description = String::from_utf16_lossy(&efivar::description_units(data));
        bv.entries.push(BootEntry {
            number,
            description,
            active: attributes & efivar::LOAD_OPTION_ACTIVE != 0,
        });
    }
    Ok(bv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_has_a_store_and_garbage_does_not() {
        let template = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd")
            .expect("OVMF_VARS_4M.fd missing: install the Debian package ovmf");
        assert!(global_variables(&template).is_ok());
        assert!(boot_vars(&[0u8; 4096]).is_err());
        // A header claiming more data than the file holds stops the walk.
        let mut bad = template.clone();
        let fv = usize::from(u16_at(&bad, 0x30).unwrap());
        let first = fv + STORE_HEADER;
        bad[first..first + 2].copy_from_slice(&0x55aau16.to_le_bytes());
        bad[first + 40..first + 44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(boot_vars(&bad).is_ok());
    }

    /// Random byte flips in a real store and a real stub never panic the
    /// parsers (the fuzz target `media_parsers` goes further).
    #[test]
    fn mutated_inputs_do_not_panic() {
        let vars = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").expect("install ovmf");
        let stub = std::fs::read(crate::uki::DEBIAN_STUB).expect("install systemd-boot-efi");
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..3000 {
            let base = if round % 2 == 0 { &vars } else { &stub };
            let mut m = base.clone();
            // Flip bytes near the headers, where the parsers look.
            for _ in 0..8 {
                let at = (next() as usize) % 8192.min(m.len());
                m[at] = next() as u8;
            }
            if round % 7 == 0 {
                m.truncate((next() as usize) % m.len());
            }
            let _ = boot_vars(&m);
            let _ = crate::uki::sections_of(&m);
            let _ = crate::uki::kernel_release(&m);
        }
    }
}
