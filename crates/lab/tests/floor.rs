//! The floor run end to end: the lab binary serves the trips and starts its own client as a
//! child process, which must play every Order and report CPU and context switches.

use std::process::Command;

#[test]
fn the_floor_run_plays_every_order_and_reports_its_cpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner-lab"))
        .args([
            "floor",
            "--orders",
            "40",
            "--in-flight",
            "4",
            "--trips",
            "2x0us,1x300us,1x2ms",
        ])
        .output()
        .expect("runs provisioner-lab floor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "floor failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert!(cpu >= 0.0, "CPU per 1,000 Orders: {cpu}");
}

#[test]
fn a_bad_trip_list_is_refused_with_its_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner-lab"))
        .args(["floor", "--trips", "3x"])
        .output()
        .expect("runs provisioner-lab floor");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trip `3x`"), "stderr: {stderr}");
}

#[test]
fn sizes_the_echo_server_cannot_frame_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner-lab"))
        .args(["floor", "--request-bytes", "100000"])
        .output()
        .expect("runs provisioner-lab floor");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--request-bytes"), "stderr: {stderr}");
}
