//! The `coresident` command against real processes running the library.

#[path = "../../preload/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{c_program, tempdir, Background};

const CLI: &str = env!("CARGO_BIN_EXE_coresident");

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CLI)
        .args(args)
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_preloads_the_library() {
    let reg = tempdir("run");
    let out = Command::new(CLI)
        .args([
            "run",
            "--registry",
            reg.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo \"$LD_PRELOAD|$CORESIDENT_REGISTRY\"",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let (pre, r) = s.trim().split_once('|').unwrap();
    assert!(pre.ends_with("libcoresident_preload.so"), "{s}");
    assert_eq!(r, reg.to_str().unwrap());
    // A command that does not exist: 127, a message on stderr.
    let out = Command::new(CLI)
        .args(["run", "--", "/nonexistent/prog"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(Command::new(CLI).output().unwrap().status.code(), Some(2));
    assert_eq!(
        Command::new(CLI)
            .arg("frobnicate")
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        Command::new(CLI)
            .arg("withdraw")
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        Command::new(CLI)
            .args(["withdraw", "--pid", "x"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn status_lists_and_withdraw_falls_back() {
    let Some(prog) = c_program("sockets") else {
        return;
    };
    let reg = tempdir("status");
    let r = reg.to_str().unwrap();
    let mut child = Command::new(CLI)
        .args(["run", "--registry", r, "--", prog.to_str().unwrap(), "hold"])
        .env("CORESIDENT_INPROC", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let child = Background::new(child);
    let ready = lines.next().unwrap().unwrap();
    let pid: u32 = ready.strip_prefix("ready ").unwrap().parse().unwrap();
    assert_eq!(pid, child.id());

    let (ok, out, err) = cli(&["status", "--registry", r]);
    assert!(ok, "{err}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(&pid.to_string()))
        .collect();
    assert_eq!(rows.len(), 2, "both ends of the connection:\n{out}");
    assert!(rows.iter().all(|l| l.contains(" ring ")), "{out}");
    assert!(rows.iter().all(|l| l.contains("127.0.0.1:")), "{out}");
    assert!(out.contains("1 processes, 2 connections"), "{out}");

    let (ok, out, err) = cli(&["withdraw", "--pid", &pid.to_string(), "--registry", r]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("pid {pid}: 2 connections back to TCP")),
        "{out}"
    );
    let (_, out, _) = cli(&["status", "--registry", r]);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(&pid.to_string()))
        .collect();
    assert!(rows.iter().all(|l| l.contains(" tcp ")), "{out}");

    // The connection still works after the fallback.
    writeln!(stdin, "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "after: pong");
    let done = child.finish(Duration::from_secs(30));
    assert!(done.status.success());

    // The process is gone: its socket is stale and cleaned up; nothing is listed.
    let (ok, out, _) = cli(&["status", "--registry", r]);
    assert!(ok);
    assert!(out.contains("0 processes, 0 connections"), "{out}");
    assert!(!reg.join("ctl").join(pid.to_string()).exists());
    let (ok, _, err) = cli(&["withdraw", "--pid", &pid.to_string(), "--registry", r]);
    assert!(!ok && err.contains("no process"), "{err}");
}

#[test]
fn a_control_directory_open_to_others_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let reg = tempdir("open");
    let ctl = reg.join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, _, err) = cli(&["status", "--registry", reg.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not trusted"), "{err}");
}
