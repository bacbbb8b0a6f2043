//! The `pareto` CLI: output format, minimisation by default, and malformed files.

use std::io::Write;
use std::process::{Command, Output};

fn run(args: &[&str], csv: &str) -> (Output, tempfile_path::TempCsv) {
    let file = tempfile_path::TempCsv::new(csv);
    let output = Command::new(env!("CARGO_BIN_EXE_pareto"))
        .args(args)
        .arg(file.path())
        .output()
        .expect("run pareto");
    (output, file)
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

/// A temporary CSV file without extra dependencies.
mod tempfile_path {
    use super::*;

    pub struct TempCsv(std::path::PathBuf);

    impl TempCsv {
        pub fn new(text: &str) -> Self {
            static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path =
                std::env::temp_dir().join(format!("pareto-cli-{}-{n}.csv", std::process::id()));
            let mut file = std::fs::File::create(&path).expect("create csv");
            file.write_all(text.as_bytes()).expect("write csv");
            Self(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempCsv {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn rank_minimises_by_default_and_maximises_on_request() {
    let csv = "1,2\n2,1\n2,2\n1,2\n";
    let (out, _f) = run(&["rank"], csv);
    assert!(out.status.success());
    assert_eq!(stdout_lines(&out), ["1", "1", "2", "1"]);
    let (out, _f) = run(&["rank", "--maximise"], csv);
    assert_eq!(stdout_lines(&out), ["2", "2", "1", "2"]);
}

#[test]
fn hv_and_hvc_by_hand() {
    // Minimisation, reference (3, 3): boxes of (1, 2) and (2, 1) are 2 x 1 each, overlap 1 x 1.
    let csv = "1,2\n2,1\n2,2\n";
    let (out, _f) = run(&["hv", "--ref", "3,3"], csv);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_lines(&out), ["3.0"]);
    let (out, _f) = run(&["hvc", "--ref", "3,3"], csv);
    assert_eq!(stdout_lines(&out), ["1.0", "1.0", "0.0"]);
    // Maximisation with a negative reference.
    let (out, _f) = run(&["hv", "--maximise", "--ref", "-1,-1"], "0,0\n");
    assert_eq!(stdout_lines(&out), ["1.0"]);
}

#[test]
fn crowding_prints_inf_at_the_ends() {
    let csv = "0,3\n1,2\n2,1\n3,0\n";
    let (out, _f) = run(&["crowding"], csv);
    let lines = stdout_lines(&out);
    assert_eq!(lines[0], "inf");
    assert_eq!(lines[3], "inf");
    let middle: f64 = lines[1].parse().expect("number");
    assert!((middle - 2.0 / 3.0).abs() < 1e-15);
}

#[test]
fn numbers_round_trip() {
    let csv = "0.1,0.7\n0.3,0.2\n";
    let (out, _f) = run(&["hv", "--ref", "1,1"], csv);
    let printed: f64 = stdout_lines(&out)[0].parse().expect("number");
    let (a, b) = ((1.0 - 0.1) * (1.0 - 0.7), (1.0f64 - 0.3) * (1.0 - 0.2));
    let overlap = (1.0 - 0.3) * (1.0 - 0.7);
    assert!((printed - (a + b - overlap)).abs() < 1e-15);
}

#[test]
fn repeat_reports_compute_seconds() {
    let (out, _f) = run(&["rank", "--repeat", "3"], "1,2\n2,1\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.starts_with("compute_seconds=")).expect("timing line");
    let seconds: f64 = line["compute_seconds=".len()..].parse().expect("seconds");
    assert!(seconds >= 0.0);
    assert_eq!(stdout_lines(&out), ["1", "1"]);
}

#[test]
fn malformed_files_exit_2_naming_the_line() {
    for (csv, needle) in [
        ("1,2\n3\n", ":2:"),
        ("1,2\n3,x\n", ":2:"),
        ("1,2\n\n3,NaN\n", ":3:"),
        ("1,inf\n", ":1:"),
        ("", "no points"),
        ("\n\n", "no points"),
    ] {
        let (out, _f) = run(&["rank"], csv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{csv:?}: {stderr}");
        assert!(stderr.contains(needle), "{csv:?}: {stderr}");
    }
    let (out, _f) = run(&["hv", "--ref", "1,2,3"], "1,2\n");
    assert_eq!(out.status.code(), Some(2));
}
