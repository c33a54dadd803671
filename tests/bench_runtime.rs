//! `skiff bench runtime` at its smallest: two container cycles and two pods. Figures are not
//! checked (timings are never asserted in a test); the report's shape is, and that the bench
//! removed everything it made. Peers (runc, crun) are used when installed and named as skipped
//! otherwise, so the test needs none.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The bench stops itself long before this (its own waits are bounded); past it, a SIGINT
/// makes it clean up and exit rather than leaving anything behind.
const DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn a_tiny_bench_prints_every_figure_and_leaves_nothing_behind() {
    let work = tempfile::Builder::new().prefix("skiff-bench-test-").tempdir_in("/tmp").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["bench", "runtime", "--iterations", "2", "--pods", "2", "--work-dir"])
        .arg(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running skiff bench runtime");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGINT);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "skiff bench runtime failed ({}):\n{stdout}\n{stderr}", out.status);

    for row in ["skiff: pod (sandbox + container)", "skiff: container in an existing sandbox"] {
        let line = stdout.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no {row:?} row:\n{stdout}"));
        let figures: Vec<f64> = line[row.len()..].split_whitespace().map(|f| f.parse().unwrap()).collect();
        assert_eq!(figures.len(), 3, "median, p90, cpu in {line:?}");
        assert!(figures.iter().all(|f| *f > 0.0), "every figure measured something: {line:?}");
    }
    for phase in ["sandbox", "create", "start", "wait", "remove"] {
        assert!(stdout.contains(&format!("{phase} ")), "phase {phase} in:\n{stdout}");
    }
    for peer in ["runc", "crun"] {
        assert!(
            stdout.contains(&format!("ratio skiff/{peer}")) || stdout.contains(&format!("{peer}: not installed")),
            "{peer} measured or named as skipped:\n{stdout}"
        );
    }
    assert!(stdout.contains("2 pods, one at a time"), "{stdout}");
    assert!(stdout.contains("2 pods, burst"), "{stdout}");
    assert!(stdout.contains("cleanup: nothing left behind"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "the bench left {left:?} in its work dir");
}
