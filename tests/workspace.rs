//! The workspace's shape: the product, the shared Pub/Sub types, the simulator and the lab are
//! separate packages; the simulator does not depend on the product (so it cannot share the
//! product's codec or ids), and the product does not depend on the lab (chaos and bench are not
//! in the image).

use std::process::Command;

use serde_json::Value;

/// The host's target triple (the graph is resolved for it only: other platforms' crates are
/// not downloaded here).
fn host() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_owned()
}

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Names of the packages `name` depends on (normal dependencies only), from the resolved graph.
fn normal_deps(meta: &Value, name: &str) -> Vec<String> {
    let id_of = |n: &str| {
        meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .find(|p| p["name"] == n)
            .map(|p| p["id"].clone())
            .unwrap_or_else(|| panic!("package {n} in the workspace"))
    };
    let name_of = |id: &Value| {
        meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .find(|p| &p["id"] == id)
            .and_then(|p| p["name"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let id = id_of(name);
    let node = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve")
        .iter()
        .find(|n| n["id"] == id)
        .expect("node");
    node["deps"]
        .as_array()
        .expect("deps")
        .iter()
        .filter(|d| {
            d["dep_kinds"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k["kind"].is_null()))
        })
        .map(|d| name_of(&d["pkg"]))
        .collect()
}

#[test]
fn members_are_the_product_proto_sim_and_lab() {
    let meta = metadata();
    let mut members: Vec<String> = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|id| {
            meta["packages"]
                .as_array()
                .expect("packages")
                .iter()
                .find(|p| &p["id"] == id)
                .and_then(|p| p["name"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            "provisioner",
            "provisioner-lab",
            "provisioner-sim",
            "pubsub-proto"
        ]
    );
}

#[test]
fn the_simulator_does_not_depend_on_the_product() {
    let meta = metadata();
    let deps = normal_deps(&meta, "provisioner-sim");
    assert!(deps.contains(&"pubsub-proto".to_owned()), "{deps:?}");
    assert!(!deps.contains(&"provisioner".to_owned()), "{deps:?}");
}

#[test]
fn the_product_does_not_depend_on_the_lab() {
    let meta = metadata();
    let deps = normal_deps(&meta, "provisioner");
    assert!(deps.contains(&"provisioner-sim".to_owned()), "{deps:?}");
    assert!(!deps.contains(&"provisioner-lab".to_owned()), "{deps:?}");
}

#[test]
fn the_product_binary_has_no_lab_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("--help")
        .output()
        .expect("provisioner --help runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("serve"), "{help}");
    for lab in ["chaos", "bench"] {
        assert!(
            !help.lines().any(|l| l.trim_start().starts_with(lab)),
            "{lab} is a lab command, not the product's:\n{help}"
        );
    }
}
