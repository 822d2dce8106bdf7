//! Test helpers: a QEMU guard and a stand-in rayosd.
//!
//! The stand-in serves the parts of the API the presenter uses — `GET
//! /v1/vms`, the `GET /v1/events` stream, `POST .../start|present|hide`,
//! `POST /v1/input/physical` — with the same JSON shapes as rayosd
//! (`rayos_api` types), and records every action so tests can check that
//! keys turned into API calls.

#![allow(dead_code)]

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rayos_api::http;
use serde_json::{Value, json};

pub struct Qemu {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// The tiny test guest, printing its keyboard events (`rayos.keys=1`).
    pub fn guest() -> Qemu {
        let guest = rayos_testkit::guest::linux_guest().expect("test guest");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let vnc = dir.path().join("vnc.sock");
        let qmp = dir.path().join("qmp.sock");
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-nodefaults", "-m", "256"])
            .args(["-display", "none", "-device", "VGA"])
            .arg("-vnc")
            .arg(format!("unix:{}", vnc.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-kernel")
            .arg(&guest.kernel)
            .arg("-initrd")
            .arg(&guest.initrd)
            .arg("-append")
            .arg(format!("{} rayos.keys=1", guest.cmdline))
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 not runnable: install qemu-system-x86 (scripts/install-deps.sh)");
        Qemu { child, dir, log }
    }

    pub fn vnc(&self) -> PathBuf {
        self.dir.path().join("vnc.sock")
    }

    pub fn qmp_path(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_console(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the guest console within {timeout:?}; console:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One VM as the stand-in reports it.
#[derive(Debug, Clone)]
pub struct MockVm {
    pub name: String,
    pub state: String,
    pub presented: bool,
    pub vnc: Option<PathBuf>,
    /// The socket a `start` gives it.
    pub vnc_after_start: Option<PathBuf>,
}

#[derive(Default)]
pub struct MockState {
    pub vms: Vec<MockVm>,
    pub calls: Vec<String>,
    pub seq: u64,
}

#[derive(Clone)]
pub struct MockDaemon {
    pub socket: PathBuf,
    pub state: Arc<(Mutex<MockState>, Condvar)>,
}

fn info(v: &MockVm) -> Value {
    json!({
        "name": v.name, "id": "6f1c1d56-7f47-4f0e-9d43-1f1c1d567f47", "kind": "linux",
        "state": v.state, "presented": v.presented, "cpus": 1, "memory_mib": 256,
        "network": false, "provisioned": true, "tpm": false, "vm_dir": "/var/rayos/vm/x",
        "disks": [], "media": [], "pid": null,
        "vnc_socket": if v.state == "running" { json!(v.vnc) } else { Value::Null },
        "last_boot": null, "saved_state": null, "unusable_states": [], "last_error": null,
        "crash_console": [], "crash_count": 0, "enabled": true, "autostart": false
    })
}

impl MockDaemon {
    pub fn start(dir: &Path, vms: Vec<MockVm>) -> MockDaemon {
        let socket = dir.join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let d = MockDaemon {
            socket,
            state: Arc::new((
                Mutex::new(MockState {
                    vms,
                    ..MockState::default()
                }),
                Condvar::new(),
            )),
        };
        let d2 = d.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let d3 = d2.clone();
                std::thread::spawn(move || d3.serve(conn));
            }
        });
        d
    }

    /// Changes the state as rayosd would, and tells event followers.
    pub fn update(&self, f: impl FnOnce(&mut MockState)) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        f(&mut s);
        s.seq += 1;
        cv.notify_all();
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.0.lock().unwrap().calls.clone()
    }

    pub fn wait_call(&self, call: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.calls().iter().any(|c| c == call) {
            assert!(
                Instant::now() < deadline,
                "no {call:?}; calls: {:?}",
                self.calls()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn serve(&self, conn: UnixStream) {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        let Ok(req) = http::read_request(&mut r, http::Limits::default()) else {
            return;
        };
        let path = req.path.clone();
        if req.method == "GET" && path == "/v1/events" {
            return self.events(&mut w);
        }
        if req.method == "GET" && path == "/v1/vms" {
            let s = self.state.0.lock().unwrap();
            let body: Vec<Value> = s.vms.iter().map(info).collect();
            let _ = http::write_response(
                &mut w,
                200,
                "application/json",
                &serde_json::to_vec(&body).unwrap(),
            );
            return;
        }
        if req.method == "POST" && path == "/v1/input/physical" {
            self.update(|s| s.calls.push("physical input".into()));
            let _ = http::write_response(&mut w, 200, "application/json", b"{}");
            return;
        }
        let parts: Vec<&str> = path.trim_start_matches("/v1/vms/").split('/').collect();
        if req.method == "POST" && parts.len() == 2 {
            let (name, action) = (parts[0].to_string(), parts[1].to_string());
            let mut reply = None;
            self.update(|s| {
                s.calls.push(format!("{action} {name}"));
                if !s.vms.iter().any(|v| v.name == name) {
                    return;
                }
                match action.as_str() {
                    "start" => {
                        let v = s.vms.iter_mut().find(|v| v.name == name).unwrap();
                        v.state = "running".into();
                        v.vnc = v.vnc_after_start.clone();
                    }
                    "present" => {
                        let running = s.vms.iter().any(|v| v.name == name && v.state == "running");
                        if !running {
                            reply = Some((409, "not running".to_string()));
                            return;
                        }
                        for v in &mut s.vms {
                            v.presented = v.name == name;
                        }
                    }
                    "hide" => {
                        for v in &mut s.vms {
                            if v.name == name {
                                v.presented = false;
                            }
                        }
                    }
                    _ => reply = Some((404, "no such action".into())),
                }
                if reply.is_none() {
                    let v = s.vms.iter().find(|v| v.name == name).unwrap();
                    reply = Some((
                        200,
                        serde_json::to_string(&json!({"vm": info(v), "message": "ok"})).unwrap(),
                    ));
                }
            });
            let (status, body) = reply.unwrap_or((404, "{\"error\":\"no such VM\"}".into()));
            let body = if status == 200 {
                body
            } else {
                json!({"error": body}).to_string()
            };
            let _ = http::write_response(&mut w, status, "application/json", body.as_bytes());
            return;
        }
        let _ = http::write_response(
            &mut w,
            404,
            "application/json",
            b"{\"error\":\"not found\"}",
        );
    }

    fn events(&self, w: &mut UnixStream) {
        if http::write_chunked_head(w, 200, "application/x-ndjson").is_err() {
            return;
        }
        let (m, cv) = &*self.state;
        let mut seen = m.lock().unwrap().seq;
        loop {
            let s = m.lock().unwrap();
            let (s, _) = cv
                .wait_timeout_while(s, Duration::from_secs(1), |s| s.seq == seen)
                .unwrap();
            if s.seq == seen {
                continue;
            }
            seen = s.seq;
            drop(s);
            let ev = json!({"seq": seen, "time_ms": 0, "vm": "x", "event": "presented", "state": "running"});
            let line = format!("{ev}\n");
            if http::write_chunk(w, line.as_bytes()).is_err() {
                return;
            }
        }
    }
}
