//! `coresident`: run programs under `libcoresident_preload.so`, list their accelerated
//! connections, and send them back to TCP.
//!
//! ```text
//! coresident run [--registry DIR] [--log PATH] [--discovery host|xen|none] -- CMD [ARGS...]
//! coresident status [--registry DIR]
//! coresident withdraw (--pid PID | --all) [--registry DIR]
//! ```
//!
//! `status` and `withdraw` talk to each process's control socket,
//! `<registry>/ctl/<pid>` (the protocol is in `docs/preload.md`). The registry directory
//! is `--registry`, else `$CORESIDENT_REGISTRY`, else `$XDG_RUNTIME_DIR/coresident`
//! (`/run/coresident` as root, `/tmp/coresident-<uid>` without a runtime directory);
//! it must be a directory of ours closed to others, or it is not trusted.
#![warn(missing_docs, missing_debug_implementations)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The library's file name.
const LIB: &str = "libcoresident_preload.so";

const USAGE: &str = "\
usage: coresident run [--registry DIR] [--log PATH] [--discovery host|xen|none] -- CMD [ARGS...]
       coresident status [--registry DIR]
       coresident withdraw (--pid PID | --all) [--registry DIR]

run       runs CMD with libcoresident_preload.so preloaded: its TCP connections to
          other programs run this way on this host take a shared-memory ring
          (--discovery sets CORESIDENT_DISCOVERY: host, the default, or xen for
          dom0 and guests of one Xen host, or none; else the inherited value)
status    lists the accelerated connections of every process (pid, 4-tuple, path,
          bytes on the ring and on TCP)
withdraw  sends those connections back to TCP mid-stream, losing nothing
";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(cmd) = args.first().and_then(|a| a.to_str()) else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let r = match cmd {
        "run" => run(rest),
        "status" => status(rest),
        "withdraw" => withdraw(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("coresident: {e}");
            ExitCode::from(2)
        }
    }
}

/// Options shared by the commands.
#[derive(Debug, Default)]
struct Opts {
    registry: Option<PathBuf>,
    log: Option<PathBuf>,
    discovery: Option<&'static str>,
    pid: Option<u32>,
    all: bool,
    /// After `--`.
    command: Vec<OsString>,
}

fn parse(args: &[OsString], allowed: &[&str]) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        let mut value = || -> Result<OsString, String> {
            i += 1;
            args.get(i).cloned().ok_or(format!("{a} needs a value"))
        };
        match a.as_str() {
            "--" if allowed.contains(&"--") => {
                o.command = args[i + 1..].to_vec();
                return Ok(o);
            }
            "--registry" if allowed.contains(&"--registry") => o.registry = Some(value()?.into()),
            "--log" if allowed.contains(&"--log") => o.log = Some(value()?.into()),
            "--discovery" if allowed.contains(&"--discovery") => {
                let v = value()?;
                o.discovery = Some(discovery(&v)?);
            }
            "--pid" if allowed.contains(&"--pid") => {
                let v = value()?;
                o.pid = Some(
                    v.to_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or(format!("--pid: not a pid: {}", v.to_string_lossy()))?,
                );
            }
            "--all" if allowed.contains(&"--all") => o.all = true,
            _ if allowed.contains(&"--") && !a.starts_with('-') => {
                o.command = args[i..].to_vec();
                return Ok(o);
            }
            _ => return Err(format!("unexpected argument {a:?}")),
        }
        i += 1;
    }
    Ok(o)
}

/// Where the library is: `$CORESIDENT_PRELOAD_LIB`, or beside this binary (cargo's
/// target directory), or in `../lib` (an install prefix).
fn library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CORESIDENT_PRELOAD_LIB") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "CORESIDENT_PRELOAD_LIB={} is not a file",
                p.display()
            ))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let dir = exe.parent().ok_or("no directory for this binary")?;
    for c in [
        dir.join(LIB),
        dir.join("deps").join(LIB),
        dir.join("../lib").join(LIB),
    ] {
        if c.is_file() {
            return c.canonicalize().map_err(|e| e.to_string());
        }
    }
    Err(format!(
        "{LIB} not found beside {} (build it with `cargo build -p coresident-preload`, or set CORESIDENT_PRELOAD_LIB)",
        exe.display()
    ))
}

/// `--discovery`'s value: one the library knows (it would fall back to plain TCP on
/// any other, with only a log line to say so; here the user hears it at once).
fn discovery(v: &std::ffi::OsStr) -> Result<&'static str, String> {
    match v.to_str() {
        Some("host") => Ok("host"),
        Some("xen") => Ok("xen"),
        Some("none") => Ok("none"),
        _ => Err(format!(
            "--discovery: {:?} is not host, xen or none",
            v.to_string_lossy()
        )),
    }
}

fn run(args: &[OsString]) -> Result<ExitCode, String> {
    let o = parse(args, &["--registry", "--log", "--discovery", "--"])?;
    let Some((prog, prog_args)) = o.command.split_first() else {
        return Err(format!("run: no command\n{USAGE}"));
    };
    let lib = library()?;
    let mut preload = OsString::from(&lib);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let mut cmd = std::process::Command::new(prog);
    cmd.args(prog_args).env("LD_PRELOAD", preload);
    if let Some(r) = &o.registry {
        cmd.env("CORESIDENT_REGISTRY", absolute(r));
    }
    if let Some(l) = &o.log {
        cmd.env("CORESIDENT_LOG", absolute(l));
    }
    if let Some(d) = o.discovery {
        cmd.env("CORESIDENT_DISCOVERY", d);
    }
    let e = cmd.exec();
    eprintln!("coresident: cannot run {}: {e}", prog.to_string_lossy());
    Ok(ExitCode::from(127))
}

fn absolute(p: &Path) -> PathBuf {
    std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
}

/// The registry directory (see the module docs).
fn registry(o: &Opts) -> PathBuf {
    if let Some(r) = &o.registry {
        return r.clone();
    }
    if let Some(r) = std::env::var_os("CORESIDENT_REGISTRY").filter(|v| !v.is_empty()) {
        return r.into();
    }
    let euid = rustix::process::geteuid().as_raw();
    if euid == 0 {
        return "/run/coresident".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("coresident"),
        _ => format!("/tmp/coresident-{euid}").into(),
    }
}

/// The control directory, if it exists and is trustworthy.
fn ctl_dir(o: &Opts) -> Result<Option<PathBuf>, String> {
    let dir = registry(o).join("ctl");
    let meta = match std::fs::symlink_metadata(&dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let euid = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a directory of ours closed to others (0700): not trusted",
            dir.display()
        ));
    }
    Ok(Some(dir))
}

/// One process's answer.
#[derive(Debug)]
struct Answer {
    pid: u32,
    lines: Vec<String>,
}

/// Sends `req` to the control socket at `path`; `None` if nobody serves it (a stale
/// socket is removed).
fn ask(path: &Path, req: &str) -> Result<Option<Vec<String>>, String> {
    let s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc_errno::ECONNREFUSED | libc_errno::ENOENT)
            ) =>
        {
            // The process is gone; its socket file is a leftover.
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(path);
            }
            return Ok(None);
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let cred = rustix::net::sockopt::socket_peercred(s.as_fd())
        .map_err(|e| format!("{}: SO_PEERCRED: {e}", path.display()))?;
    let me = rustix::process::geteuid();
    if cred.uid != me && !cred.uid.is_root() {
        return Err(format!(
            "{}: served by uid {}, not us: refused",
            path.display(),
            cred.uid.as_raw()
        ));
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    (&s).write_all(format!("{req}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = Vec::new();
    for l in BufReader::new(&s).lines() {
        lines.push(l.map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Ok(Some(lines))
}

/// The errno values `ask` distinguishes.
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ECONNREFUSED: i32 = 111;
}

/// Asks every process (or one) and returns the answers, sorted by pid.
fn ask_all(o: &Opts, req: &str) -> Result<Vec<Answer>, String> {
    let Some(dir) = ctl_dir(o)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if o.pid.is_some_and(|p| p != pid) {
            continue;
        }
        match ask(&e.path(), req) {
            Ok(Some(lines)) => out.push(Answer { pid, lines }),
            Ok(None) => {}
            Err(err) => eprintln!("coresident: {err}"),
        }
    }
    out.sort_by_key(|a| a.pid);
    Ok(out)
}

/// `key=value` of a status line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("-")
}

fn status(args: &[OsString]) -> Result<ExitCode, String> {
    let o = parse(args, &["--registry"])?;
    let answers = ask_all(&o, "status")?;
    println!(
        "{:>7} {:>4} {:<22} {:<22} {:<5} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "PID", "FD", "LOCAL", "PEER", "PATH", "RING_TX", "RING_RX", "TCP_TX", "TCP_RX", "SWITCHES"
    );
    let mut conns = 0;
    for a in &answers {
        for l in a.lines.iter().filter(|l| l.starts_with("conn ")) {
            conns += 1;
            println!(
                "{:>7} {:>4} {:<22} {:<22} {:<5} {:>12} {:>12} {:>12} {:>12} {:>8}",
                a.pid,
                field(l, "fd"),
                field(l, "local"),
                field(l, "peer"),
                field(l, "path"),
                field(l, "ring_tx"),
                field(l, "ring_rx"),
                field(l, "tcp_tx"),
                field(l, "tcp_rx"),
                field(l, "switches"),
            );
        }
    }
    println!("{} processes, {conns} connections", answers.len());
    Ok(ExitCode::SUCCESS)
}

fn withdraw(args: &[OsString]) -> Result<ExitCode, String> {
    let o = parse(args, &["--registry", "--pid", "--all"])?;
    if o.pid.is_some() == o.all {
        return Err(format!("withdraw: give --pid PID or --all\n{USAGE}"));
    }
    let answers = ask_all(&o, "withdraw")?;
    if answers.is_empty() {
        if let Some(p) = o.pid {
            return Err(format!("withdraw: no process {p} runs the library"));
        }
    }
    for a in &answers {
        let n = a
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("withdrawn "))
            .unwrap_or("?");
        println!("pid {}: {n} connections back to TCP", a.pid);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn run_takes_a_known_discovery_only() {
        let allowed = ["--registry", "--log", "--discovery", "--"];
        let o = parse(&args(&["--discovery", "xen", "--", "socat"]), &allowed).unwrap();
        assert_eq!(o.discovery, Some("xen"));
        assert_eq!(o.command, args(&["socat"]));
        for v in ["host", "none"] {
            let o = parse(&args(&["--discovery", v, "true"]), &allowed).unwrap();
            assert_eq!(o.discovery, Some(v));
        }
        for bad in ["Xen", "", "xen ", "shm", "../x"] {
            assert!(parse(&args(&["--discovery", bad, "true"]), &allowed).is_err());
        }
        assert!(parse(&args(&["--discovery"]), &allowed).is_err());
        // Not an option of status.
        assert!(parse(&args(&["--discovery", "xen"]), &["--registry"]).is_err());
    }
}
