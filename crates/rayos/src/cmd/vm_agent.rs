//! `rayos vm type|key|click|send|exec`: the agent bridge from the command
//! line (docs/agent-bridge.md). Each is one request to rayosd; the
//! daemon checks key names, the layout, routing and limits.
//!
//! `vm exec` exits with the program's exit code (128 + N for a signal), so
//! scripts use it like `ssh`; its own failures use the usual codes, and a
//! program still running at the time limit exits 1 with a message.

use std::io::Write;
use std::process::ExitCode;

use rayos_api::{Button, Client, ExecRequest, InputAction, InputRequest};

use super::vm::{client_err, print_json};
use super::{Exit, exit};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ButtonArg {
    Left,
    Middle,
    Right,
}

#[derive(clap::Subcommand)]
pub enum AgentCommand {
    /// Type TEXT into a VM with its keyboard layout (as is: no escapes).
    Type {
        name: String,
        text: String,
        /// Press Return after the text.
        #[arg(long)]
        enter: bool,
        /// Send it although the VM is not presented.
        #[arg(long)]
        hidden: bool,
    },
    /// Press key combinations one after another: `ctrl+alt+delete`,
    /// `ret`, `shift+tab` (QEMU key names joined by `+`).
    Key {
        name: String,
        #[arg(required = true)]
        keys: Vec<String>,
        /// Send them although the VM is not presented.
        #[arg(long)]
        hidden: bool,
    },
    /// Click at pixel X Y of the VM's screen (as a screenshot shows it).
    Click {
        name: String,
        x: u32,
        y: u32,
        #[arg(long, value_enum, default_value = "left")]
        button: ButtonArg,
        /// Send it although the VM is not presented.
        #[arg(long)]
        hidden: bool,
    },
    /// Write TEXT and a newline to the VM's serial console.
    Send {
        name: String,
        text: String,
        /// Leave the newline out.
        #[arg(long)]
        no_newline: bool,
    },
    /// Run a program in the guest through its guest agent: `rayos vm exec
    /// NAME -- /bin/ls -l /`. Prints its output and exits with its code.
    Exec {
        name: String,
        /// Seconds to wait for it (default 30, at most 300).
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
        command: Vec<String>,
    },
}

fn input(
    c: &Client,
    name: &str,
    actions: Vec<InputAction>,
    hidden: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let r = c
        .input(name, &InputRequest { actions, hidden })
        .map_err(client_err)?;
    if json {
        print_json(&r)?;
    } else {
        println!("sent {} input events to VM {name}", r.events);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(c: &Client, command: AgentCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        AgentCommand::Type {
            name,
            text,
            enter,
            hidden,
        } => {
            let mut actions = vec![InputAction::Text { text }];
            if enter {
                actions.push(InputAction::Key { keys: "ret".into() });
            }
            input(c, &name, actions, hidden, json)
        }
        AgentCommand::Key { name, keys, hidden } => {
            let actions = keys
                .into_iter()
                .map(|keys| InputAction::Key { keys })
                .collect();
            input(c, &name, actions, hidden, json)
        }
        AgentCommand::Click {
            name,
            x,
            y,
            button,
            hidden,
        } => {
            let button = match button {
                ButtonArg::Left => Button::Left,
                ButtonArg::Middle => Button::Middle,
                ButtonArg::Right => Button::Right,
            };
            input(
                c,
                &name,
                vec![InputAction::Click { x, y, button }],
                hidden,
                json,
            )
        }
        AgentCommand::Send {
            name,
            mut text,
            no_newline,
        } => {
            if !no_newline {
                text.push('\n');
            }
            let r = c.console_write(&name, &text).map_err(client_err)?;
            if json {
                print_json(&r)?;
            } else {
                println!("wrote {} bytes to VM {name}'s console", r.bytes);
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Exec {
            name,
            timeout,
            command,
        } => {
            let mut it = command.into_iter();
            let path = it.next().unwrap_or_default();
            let req = ExecRequest {
                path,
                args: it.collect(),
                input: None,
                timeout_secs: timeout,
            };
            // The daemon waits up to the time limit; so does this client.
            let wait = timeout.unwrap_or(rayos_api::DEFAULT_EXEC_SECS) + 30;
            let r = c
                .clone()
                .with_timeout(Some(std::time::Duration::from_secs(wait)))
                .exec(&name, &req)
                .map_err(client_err)?;
            if json {
                print_json(&r)?;
            } else {
                let _ = std::io::stdout().write_all(r.stdout.as_bytes());
                let _ = std::io::stderr().write_all(r.stderr.as_bytes());
                if r.stdout_truncated || r.stderr_truncated {
                    eprintln!(
                        "rayos: output cut at {} bytes per stream",
                        rayos_api::MAX_EXEC_OUTPUT
                    );
                }
            }
            if r.timed_out {
                return Err(Exit::new(
                    exit::FAILED,
                    format!(
                        "the program (pid {} in VM {name}) still runs after the time limit: raise --timeout",
                        r.pid
                    ),
                )
                .into());
            }
            let code = match (r.exit_code, r.signal) {
                (_, Some(sig)) => 128 + sig,
                (Some(c), None) => c,
                (None, None) => 1,
            };
            Ok(ExitCode::from(
                u8::try_from(code.clamp(0, 255)).unwrap_or(1),
            ))
        }
    }
}
