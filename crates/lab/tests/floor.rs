//! The floor run end to end: the lab binary serves the trips and starts its own client as a
//! child process, which must play every Order and report CPU and context switches.

use std::process::{Command, Output};

/// `provisioner-lab floor` with `args`.
fn floor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_provisioner-lab"))
        .arg("floor")
        .args(args)
        .output()
        .expect("runs provisioner-lab floor")
}

/// Asserts that `args` are refused and that the error names `reason`.
fn refused(args: &[&str], reason: &str) {
    let out = floor(args);
    assert!(!out.status.success(), "{args:?} was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(reason), "stderr: {stderr}");
}

#[test]
fn the_floor_run_plays_every_order_and_reports_its_cpu() {
    let out = floor(&[
        "--orders",
        "40",
        "--in-flight",
        "4",
        "--trips",
        "2x0us,1x300us,1x2ms",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "floor failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // The count is the Orders the child finished, not the number asked for.
    assert!(
        stdout.contains("floor: 40 Orders of 4 trips"),
        "unexpected report: {stdout}"
    );
    let cpu: f64 = stdout
        .split("CPU ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no CPU figure in: {stdout}"));
    assert!(cpu.is_finite(), "CPU per 1,000 Orders: {cpu}");
}

#[test]
fn a_bad_trip_list_is_refused_with_its_reason() {
    refused(&["--trips", "3x"], "trip `3x`");
}

#[test]
fn sizes_the_echo_server_cannot_frame_are_refused() {
    refused(&["--request-bytes", "100000"], "--request-bytes");
    refused(&["--request-bytes", "8"], "--request-bytes");
    refused(&["--response-bytes", "0"], "--response-bytes");
}
