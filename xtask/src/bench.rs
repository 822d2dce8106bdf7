//! `cargo xtask bench <what>`: each benchmark measures RayOS against a
//! baseline in the same run and reports ratios, never absolute times alone
//! (these machines are noisy). One module per benchmark.

mod boot;
mod install;
mod present;
mod update;
mod vm;
mod vm_debian;

/// Median, smallest and largest of a benchmark's repetitions: what each
/// benchmark prints (these machines are noisy, so the spread is shown).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The [`Spread`] of `values` (all zero when there are none); an even
/// count's median is the mean of the middle two.
pub(crate) fn spread(values: impl IntoIterator<Item = f64>) -> Spread {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    let median = match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Spread {
        median,
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

/// The median of `values` ([`spread`]).
pub(crate) fn median(values: &[f64]) -> f64 {
    spread(values.iter().copied()).median
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Kernel start to RAYOS_READY vs a busybox init; media sizes; rayosd memory.
    Boot(boot::Args),
    /// Installer wall time against `dd` of the same bytes.
    Install(install::Args),
    /// Resume vs cold boot, save/restore vs dd, daemon RSS.
    Vm(vm::Args),
    /// Applying an update bundle against `cp` + `sync` of the same bytes.
    Update(update::Args),
    /// Presenter: present→first frame and key→guest vs a direct VNC client; CPU while hidden.
    Present(present::Args),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Boot(a) => boot::run(a),
        What::Install(a) => install::run(a),
        What::Vm(a) => vm::run(a),
        What::Update(a) => update::run(a),
        What::Present(a) => present::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_even_and_empty_lists() {
        let s = spread([3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(
            spread([]),
            Spread {
                median: 0.0,
                min: 0.0,
                max: 0.0
            }
        );
    }
}
