//! Stage 3, size: the sizes of the partitions the planner lays out, each
//! checked against its role's minimum and the 1 PiB bound and rounded up
//! to 1 MiB.

use crate::answers::{MAX_SIZE, check_size_bound, human_size};

use super::roles::Request;
use super::{ALIGN, MIN_DATA, PlanError, Role};

/// The new partitions with their final sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sizes {
    /// Role and bytes (a multiple of 1 MiB; `None`: the rest of the
    /// region), in layout order.
    pub parts: Vec<(Role, Option<u64>)>,
    /// The bytes they need at least (the rest counts as the data
    /// minimum).
    pub needed: u64,
}

/// Sizes the requests. Input: the new partitions in layout order, with
/// the bytes asked for. Output: [`Sizes`], or the first request below its
/// role's minimum or above the bound, named by its answer-file key.
pub(super) fn size(requests: &[Request]) -> Result<Sizes, PlanError> {
    let mut parts = Vec::new();
    for r in requests {
        let (at, what) = answer_key(r.role);
        let refuse = |what: String| {
            Err(PlanError::Partition {
                at: at.to_string(),
                what,
            })
        };
        match r.bytes {
            Some(b) if b < r.role.min_size() => {
                return refuse(format!(
                    "{what} must be at least {}",
                    human_size(r.role.min_size())
                ));
            }
            // Intents built in code (the wizard, tools) skip the parser's
            // bound, so it is checked again here; below it, rounding and
            // sums cannot overflow.
            Some(b) => match check_size_bound(b) {
                Ok(b) => parts.push((r.role, Some(b.div_ceil(ALIGN) * ALIGN))),
                Err(b) => {
                    return refuse(format!(
                        "{} is more than the largest size RayOS accepts ({})",
                        human_size(b),
                        human_size(MAX_SIZE)
                    ));
                }
            },
            None if r.role == Role::Data => parts.push((r.role, None)),
            None => return refuse(format!("{what} cannot take the rest of the disk")),
        }
    }
    // At most five sizes of at most MAX_SIZE each: no overflow, but checked
    // all the same so a change of the bound cannot turn into a panic.
    let needed = parts
        .iter()
        .map(|(_, b)| b.unwrap_or(MIN_DATA))
        .try_fold(0u64, u64::checked_add)
        .ok_or_else(|| PlanError::Invalid("the sizes add up to more than 16 EiB".into()))?;
    Ok(Sizes { parts, needed })
}

/// The answer that sizes a role's new partition, and the role in words.
fn answer_key(role: Role) -> (&'static str, &'static str) {
    match role {
        Role::Esp => ("[sizes] esp", "an ESP RayOS creates"),
        Role::System => ("[sizes] system", "the system partition"),
        Role::Data => ("[sizes] data", "the data partition"),
        Role::VmLinux => ("[vm_storage] linux", "VM storage"),
        Role::VmWindows => ("[vm_storage] windows", "VM storage"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::{GIB, MIB};

    fn req(role: Role, bytes: Option<u64>) -> Request {
        Request { role, bytes }
    }

    #[test]
    fn sizes_round_up_to_1_mib_and_the_rest_counts_its_minimum() {
        let s = size(&[
            req(Role::Esp, Some(GIB)),
            req(Role::System, Some(2 * GIB - 1)),
            req(Role::VmLinux, Some(GIB + 1)),
            req(Role::Data, None),
        ])
        .unwrap();
        assert_eq!(
            s.parts,
            [
                (Role::Esp, Some(GIB)),
                (Role::System, Some(2 * GIB)),
                (Role::VmLinux, Some(GIB + MIB)),
                (Role::Data, None)
            ]
        );
        assert_eq!(s.needed, GIB + 2 * GIB + GIB + MIB + MIN_DATA);
        assert_eq!(size(&[]).unwrap().needed, 0);
    }

    #[test]
    fn minimums_and_the_bound_name_the_answer() {
        for (r, key, words) in [
            (req(Role::Esp, Some(100 * MIB)), "[sizes] esp", "512 MiB"),
            (req(Role::System, Some(MIB)), "[sizes] system", "512 MiB"),
            (req(Role::Data, Some(GIB - 1)), "[sizes] data", "1 GiB"),
            (
                req(Role::VmWindows, Some(0)),
                "[vm_storage] windows",
                "1 GiB",
            ),
            (
                req(Role::VmLinux, Some(u64::MAX)),
                "[vm_storage] linux",
                "largest size",
            ),
            (req(Role::System, None), "[sizes] system", "rest"),
        ] {
            let e = size(&[req(Role::Data, None), r]).unwrap_err();
            let m = e.to_string();
            assert!(m.starts_with(key) && m.contains(words), "{m}");
        }
        // The largest accepted sizes still add up without overflow.
        let max = size(&[
            req(Role::Esp, Some(MAX_SIZE)),
            req(Role::System, Some(MAX_SIZE)),
            req(Role::VmLinux, Some(MAX_SIZE)),
            req(Role::VmWindows, Some(MAX_SIZE)),
            req(Role::Data, Some(MAX_SIZE)),
        ])
        .unwrap();
        assert_eq!(max.needed, 5 * MAX_SIZE);
    }
}
