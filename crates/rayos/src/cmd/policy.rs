//! `rayos policy show|set KEY VALUE|edit`: the policy without the recovery
//! menu (docs/policy.md).
//!
//! rayosd owns the running policy: the command reads it with `GET
//! /v1/policy` and replaces it with `PUT /v1/policy`, which checks it with
//! the file's own rules, writes it atomically (previous generation kept as
//! `.prev`) and uses it at once; the answer lists each change and when it
//! takes effect. When rayosd cannot be reached (recovery mode, or before
//! it started) the file on the data volume is checked and written the same
//! way, and the answer says it takes effect when rayosd starts.
//!
//! `edit` is line based (`set N TEXT`, `add TEXT`, `del N`, `show`,
//! `save`, `cancel`), because the image has no text editor; it works on a
//! pipe as on a terminal.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use rayos_api::{Client, ClientError, PolicyReply};
use rayos_init::recovery::edit_policy;
use rayos_state::{DataLayout, Policy};

use super::{Exit, exit};

#[derive(clap::Args)]
pub struct Args {
    /// The daemon's API socket.
    #[arg(long, global = true, env = rayos_api::SOCKET_ENV, default_value = rayos_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The data volume, used when rayosd cannot be reached.
    #[arg(long, global = true, default_value = rayos_base::paths::DATA)]
    state_dir: PathBuf,
    /// Print the JSON reply.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Every setting with its value (`--toml`: the file).
    Show {
        #[arg(long)]
        toml: bool,
    },
    /// Change one setting: KEY is SECTION.SETTING (linux.networking,
    /// windows.enabled, generic.cpus, ...), VALUE as in the file
    /// (true/false, off/on/provisioning_only, save/shutdown, a number or
    /// `none`).
    Set { key: String, value: String },
    /// Edit the policy file line by line, then save it.
    Edit,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let target = Target::new(&a.socket, &a.state_dir);
    match a.command {
        Command::Show { toml } => {
            let (r, live) = target.read()?;
            if a.json {
                print_json(&r)?;
            } else if toml {
                print!("{}", r.toml);
            } else {
                println!("policy {}{}", r.path.display(), offline_note(live));
                for (k, v) in &r.settings {
                    println!("  {k:<26} {v}");
                }
            }
        }
        Command::Set { key, value } => {
            let (r, _) = target.read()?;
            let mut p = Policy::parse(&r.path.to_string_lossy(), &r.toml)
                .map_err(|e| Exit::new(exit::FAILED, e.to_string()))?;
            p.set(&key, &value)
                .map_err(|e| Exit::new(exit::BAD_INPUT, format!("policy not changed: {e}")))?;
            let (r, live) = target.write(&p.to_toml())?;
            report(&r, live, a.json)?;
        }
        Command::Edit => {
            let (r, _) = target.read()?;
            let stdin = io::stdin();
            let mut input = stdin.lock();
            let mut out = io::stdout();
            match edit(&r.toml, &mut input, &mut out, &|text| {
                Policy::parse(&r.path.to_string_lossy(), text)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })? {
                Some(text) => {
                    let (r, live) = target.write(&text)?;
                    report(&r, live, a.json)?;
                }
                None => println!("policy not changed"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the policy is read and written: rayosd, or the file when rayosd
/// cannot be reached.
struct Target {
    client: Client,
    path: PathBuf,
}

impl Target {
    fn new(socket: &Path, state_dir: &Path) -> Target {
        Target {
            client: Client::new(socket),
            path: DataLayout::new(state_dir).policy(),
        }
    }

    /// The policy and whether it came from a running rayosd.
    fn read(&self) -> anyhow::Result<(PolicyReply, bool)> {
        match self.client.policy() {
            Ok(r) => Ok((r, true)),
            Err(ClientError::Unreachable { .. }) => {
                let (bytes, _) = rayos_state::read_with_fallback(&self.path).map_err(|e| {
                    Exit::new(
                        exit::UNREACHABLE,
                        format!("rayosd is not running and {}", rayos_base::error::chain(&e)),
                    )
                })?;
                let text = String::from_utf8_lossy(&bytes).into_owned();
                // A file that does not parse is still shown (and editable):
                // its settings are what the closed policy would be.
                let settings = Policy::parse(&self.path.to_string_lossy(), &text)
                    .unwrap_or_else(|_| Policy::closed())
                    .entries();
                Ok((
                    PolicyReply {
                        path: self.path.clone(),
                        toml: text,
                        settings,
                        changes: Vec::new(),
                        notes: Vec::new(),
                    },
                    false,
                ))
            }
            Err(e) => Err(client_err(e)),
        }
    }

    /// Writes `text` (checked first, by rayosd or here).
    fn write(&self, text: &str) -> anyhow::Result<(PolicyReply, bool)> {
        match self.client.set_policy(text) {
            Ok(r) => Ok((r, true)),
            Err(ClientError::Unreachable { .. }) => {
                let name = self.path.to_string_lossy();
                let new = Policy::parse(&name, text).map_err(|e| {
                    Exit::new(exit::BAD_INPUT, format!("the policy was not changed: {e}"))
                })?;
                let old = rayos_state::read_with_fallback(&self.path)
                    .ok()
                    .and_then(|(b, _)| Policy::parse(&name, &String::from_utf8_lossy(&b)).ok())
                    .unwrap_or_else(Policy::closed);
                if let Some(d) = self.path.parent() {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("cannot create {}", d.display()))?;
                }
                rayos_state::write_atomic(&self.path, text.as_bytes())?;
                Ok((
                    PolicyReply {
                        path: self.path.clone(),
                        toml: text.to_string(),
                        settings: new.entries(),
                        changes: old.changes(&new),
                        notes: Vec::new(),
                    },
                    false,
                ))
            }
            Err(e) => Err(client_err(e)),
        }
    }
}

fn offline_note(live: bool) -> &'static str {
    if live {
        ""
    } else {
        " (rayosd is not running: this is the file on the data volume)"
    }
}

/// Prints what changed and when it takes effect.
fn report(r: &PolicyReply, live: bool, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    if r.changes.is_empty() {
        println!(
            "policy saved to {} (previous version kept as .prev); no setting changed",
            r.path.display()
        );
    } else {
        println!(
            "policy saved to {} (previous version kept as .prev):",
            r.path.display()
        );
    }
    for c in &r.changes {
        let when = if live {
            c.when.describe()
        } else {
            "when rayosd starts (the next boot of RayOS)"
        };
        println!(
            "  {} = {} (was {}): takes effect {when}",
            c.key, c.new, c.old
        );
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    Ok(())
}

/// The line editor of `policy edit` ([`edit_policy`] on a terminal):
/// returns the text to save, or `None` when cancelled (or at end of input).
/// `check` says why a text cannot be saved; the person then fixes it or
/// cancels.
pub fn edit(
    text: &str,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    check: &dyn Fn(&str) -> Result<(), String>,
) -> io::Result<Option<String>> {
    for (i, l) in text.lines().enumerate() {
        writeln!(out, "{:3}  {l}", i + 1)?;
    }
    let mut ask = |out: &mut dyn Write, q: &str| -> io::Result<Option<String>> {
        write!(out, "{q}")?;
        out.flush()?;
        let mut cmd = String::new();
        if input.read_line(&mut cmd)? == 0 {
            writeln!(out)?;
            return Ok(None);
        }
        Ok(Some(cmd.trim_end_matches(['\n', '\r']).to_string()))
    };
    edit_policy(text, &mut ask, out, &mut |t| check(t))
}

fn client_err(e: ClientError) -> anyhow::Error {
    let code = match &e {
        ClientError::Unreachable { .. } => exit::UNREACHABLE,
        ClientError::Status { status: 400, .. } => exit::BAD_INPUT,
        _ => exit::FAILED,
    };
    Exit::new(code, rayos_base::error::chain(&e)).into()
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("encoding the reply")?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_edit(text: &str, keys: &str) -> (Option<String>, String) {
        let mut out = Vec::new();
        let r = edit(text, &mut keys.as_bytes(), &mut out, &|t| {
            Policy::parse("p", t).map(|_| ()).map_err(|e| e.to_string())
        })
        .unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn edit_refuses_an_invalid_text_until_fixed() {
        let text = "version = 1\n[linux]\nautostart = true\n";
        let (r, out) = run_edit(
            text,
            "set 3 autostrat = true\nsave\nset 3 networking = \"on\"\nsave\n",
        );
        assert!(out.contains("not saved: p:3:"), "{out}");
        assert_eq!(r.unwrap(), "version = 1\n[linux]\nnetworking = \"on\"\n");
    }

    #[test]
    fn edit_cancel_and_end_of_input_save_nothing() {
        let text = "version = 1\n";
        assert_eq!(run_edit(text, "add [windows]\ncancel\n").0, None);
        assert_eq!(run_edit(text, "add [windows]\n").0, None);
        let (r, out) = run_edit(
            text,
            "del 7\nset x y\nfrob\nadd [windows]\nadd enabled = true\nsave\n",
        );
        assert!(out.contains("no line 7"), "{out}");
        assert!(out.contains("usage: set N TEXT"), "{out}");
        assert!(out.contains("unknown \"frob\""), "{out}");
        assert_eq!(r.unwrap(), "version = 1\n[windows]\nenabled = true\n");
    }
}
