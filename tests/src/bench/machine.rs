//! The machine a run happened on, for BENCHMARKS.md: CPU, cores, memory, kernel, Debian, the
//! versions of what was compared, the commit, and the load (other work skews the numbers).

use std::fs;
use std::path::Path;
use std::process::Command;

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn first_line_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim().to_string();
    (!line.is_empty()).then_some(line)
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    read("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_string())
}

/// (label, value) pairs describing the machine and the software compared.
pub fn describe(repo: &Path) -> Vec<(String, String)> {
    let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "?".to_string());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = read("/proc/meminfo")
        .and_then(|m| {
            let kib: u64 = m
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "?".to_string());
    let kernel = read("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".to_string());
    let debian = read("/etc/debian_version")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "not Debian".to_string());
    let date = first_line_of(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_else(|| "?".to_string());
    let commit = std::env::var("FLATNET_BENCH_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git_commit(repo))
        .unwrap_or_else(|| "?".to_string());
    let plugins = first_line_of(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${Version}",
        "containernetworking-plugins",
    ]))
    .map(|v| format!("containernetworking-plugins {v} (Debian)"))
    .unwrap_or_else(|| "containernetworking-plugins (version unknown)".to_string());
    let podman = first_line_of(Command::new("podman").arg("--version"))
        .unwrap_or_else(|| "not installed".to_string());
    vec![
        ("CPU".into(), cpu),
        ("cores".into(), cores.to_string()),
        ("memory".into(), memory),
        ("kernel".into(), kernel),
        ("Debian".into(), debian),
        ("date".into(), date),
        ("git commit".into(), commit),
        ("reference plugins".into(), plugins),
        ("Podman".into(), podman),
    ]
}

/// `HEAD` of `repo`, with "+ uncommitted changes" when the tree is dirty.
fn git_commit(repo: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(repo)
            .arg("-c")
            .arg(format!("safe.directory={}", repo.display()))
            .args(args);
        cmd
    };
    let head = first_line_of(&mut git(&["rev-parse", "--short=12", "HEAD"]))?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{head} + uncommitted changes")
    } else {
        head
    })
}
