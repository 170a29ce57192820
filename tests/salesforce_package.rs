//! The Salesforce package in `salesforce/` (sfdx source format) agrees with the daemon:
//! every metadata file is well-formed XML of the right type and name; its custom fields are
//! exactly the `sf_field_*` defaults of `config/default.toml` (plus the contract's
//! `Version__c`, which has no setting); field types and picklist values are the ones the
//! daemon reads and writes; the Flows set `Activating` on approval and publish the event; the
//! permission set grants the integration user what the daemon uses. Deploying the package
//! into an existing org replaces nothing of the org's own: the `OrderStatus` standard value
//! set is a separate, optional project in `salesforce/optional/order-status/`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use provisioner::config::DEFAULT_TOML;
use roxmltree::{Document, Node};

const METADATA_NS: &str = "http://soap.sforce.com/2006/04/metadata";
const EVENT: &str = "OrderProvisionRequested__e";
/// Event fields of the contract that have no `sf_field_*` setting (the decoder reads them by
/// their fixed name).
const CONTRACT_ONLY_FIELDS: &[&str] = &["OrderProvisionRequested__e.Version__c"];
/// Common standard value sets (the values of standard picklists such as Order Status; the
/// Metadata API names many more, for industry objects). A GlobalValueSet of one of these names
/// would stand in for the org's standard values.
const STANDARD_VALUE_SETS: &[&str] = &[
    "AccountContactMultiRoles",
    "AccountContactRole",
    "AccountOwnership",
    "AccountRating",
    "AccountType",
    "AssetStatus",
    "CampaignMemberStatus",
    "CampaignStatus",
    "CampaignType",
    "CaseContactRole",
    "CaseOrigin",
    "CasePriority",
    "CaseReason",
    "CaseStatus",
    "CaseType",
    "ContactRole",
    "ContractContactRole",
    "ContractStatus",
    "EntitlementType",
    "EventSubject",
    "EventType",
    "Industry",
    "LeadSource",
    "LeadStatus",
    "OpportunityCompetitor",
    "OpportunityStage",
    "OpportunityType",
    "OrderStatus",
    "OrderType",
    "PartnerRole",
    "Product2Family",
    "QuoteStatus",
    "Salutation",
    "SolutionStatus",
    "TaskPriority",
    "TaskStatus",
    "TaskSubject",
    "TaskType",
    "WorkOrderPriority",
    "WorkOrderStatus",
];

/// The sfdx project deployed into the org.
fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("salesforce")
}

/// The optional sfdx project that sets the org's Order Status values.
fn order_status_root() -> PathBuf {
    project_root().join("optional/order-status")
}

fn order_status_file() -> PathBuf {
    order_status_root()
        .join("force-app/main/default/standardValueSets/OrderStatus.standardValueSet-meta.xml")
}

fn project(root: &Path) -> serde_json::Value {
    serde_json::from_str(&read(&root.join("sfdx-project.json"))).expect("sfdx-project.json is JSON")
}

/// Every package directory of the sfdx project in `root`, with its `default` flag.
/// `sf project deploy start` without `--source-dir` deploys all of them, default or not.
fn package_dirs(root: &Path) -> Vec<(PathBuf, bool)> {
    let project = project(root);
    let dirs = project["packageDirectories"]
        .as_array()
        .expect("packageDirectories is a list");
    assert!(
        !dirs.is_empty(),
        "{}: no packageDirectories",
        root.display()
    );
    dirs.iter()
        .map(|d| {
            let path = d["path"].as_str().expect("packageDirectories[].path");
            (root.join(path), d["default"] == true)
        })
        .collect()
}

/// Source of the default package directory: the custom fields, Flows and permission set.
fn source_root() -> PathBuf {
    let defaults: Vec<PathBuf> = package_dirs(&project_root())
        .into_iter()
        .filter_map(|(dir, default)| default.then_some(dir))
        .collect();
    assert_eq!(defaults.len(), 1, "one default package directory");
    defaults[0].join("main/default")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every file in the package directories of the sfdx project in `root`.
fn project_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (dir, _) in package_dirs(root) {
        files(&dir, &mut out);
    }
    out.sort();
    out
}

/// What deploying `salesforce/` sends to the org.
fn metadata_files() -> Vec<PathBuf> {
    project_files(&project_root())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.has_tag_name((METADATA_NS, name)))
}

fn children<'a, 'i>(node: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |c| c.has_tag_name((METADATA_NS, name)))
}

fn text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, name).and_then(|c| c.text()).map(str::trim)
}

/// Settings of `config/default.toml` as strings.
fn defaults() -> BTreeMap<String, String> {
    use figment::providers::{Format, Toml};
    let table: BTreeMap<String, figment::value::Value> =
        figment::Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("default.toml parses");
    table
        .into_iter()
        .filter_map(|(k, v)| v.into_string().map(|s| (k, s)))
        .collect()
}

/// `Object.Field` of every `sf_field_*` default: event fields on the event, `account_*` on
/// Account, `product_*` on Product2, the rest on Order.
fn configured_fields() -> BTreeSet<String> {
    let fields: BTreeSet<String> = defaults()
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("sf_field_")?;
            let object = if key.starts_with("event_") {
                EVENT
            } else if key.starts_with("account_") {
                "Account"
            } else if key.starts_with("product_") {
                "Product2"
            } else {
                "Order"
            };
            Some(format!("{object}.{v}"))
        })
        .collect();
    assert!(fields.len() >= 12, "sf_field_* settings: {fields:?}");
    fields
}

/// A custom field of the package: `Object.Field` → its parsed XML text.
fn package_fields() -> BTreeMap<String, (PathBuf, String)> {
    metadata_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".field-meta.xml"))
        .map(|p| {
            let object = p
                .parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .expect("objects/<Object>/fields/<Field>.field-meta.xml")
                .to_owned();
            let field = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".field-meta.xml"))
                .expect("field file name")
                .to_owned();
            let xml = read(&p);
            (format!("{object}.{field}"), (p, xml))
        })
        .collect()
}

fn field_xml<'a>(fields: &'a BTreeMap<String, (PathBuf, String)>, name: &str) -> Document<'a> {
    let (path, xml) = fields
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not in the package"));
    Document::parse(xml).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn picklist_values(doc: &Document) -> Vec<String> {
    let root = doc.root_element();
    let set = child(root, "valueSet")
        .and_then(|v| child(v, "valueSetDefinition"))
        .expect("valueSet/valueSetDefinition");
    children(set, "value")
        .map(|v| text(v, "fullName").expect("value fullName").to_owned())
        .collect()
}

#[test]
fn every_metadata_file_is_well_formed_and_named_after_its_component() {
    let expected_root = [
        (".object-meta.xml", "CustomObject"),
        (".field-meta.xml", "CustomField"),
        (".flow-meta.xml", "Flow"),
        (".permissionset-meta.xml", "PermissionSet"),
        (".standardValueSet-meta.xml", "StandardValueSet"),
    ];
    let deployed = metadata_files();
    assert!(deployed.len() >= 17, "metadata files: {deployed:?}");
    let optional = project_files(&order_status_root());
    assert_eq!(
        optional,
        [order_status_file()],
        "the optional Order Status project"
    );
    for path in deployed.iter().chain(&optional) {
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        let (suffix, root_tag) = expected_root
            .iter()
            .find(|(s, _)| name.ends_with(s))
            .unwrap_or_else(|| panic!("{}: unexpected file in the package", path.display()));
        let xml = read(path);
        assert!(
            xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?>"#),
            "{}: XML declaration",
            path.display()
        );
        let doc = Document::parse(&xml)
            .unwrap_or_else(|e| panic!("{} is not well-formed XML: {e}", path.display()));
        let root = doc.root_element();
        assert!(
            root.has_tag_name((METADATA_NS, *root_tag)),
            "{}: root is {:?}, expected {root_tag} in the metadata namespace",
            path.display(),
            root.tag_name()
        );
        // A component's fullName, where it carries one, is its file name.
        if let Some(full) = text(root, "fullName") {
            assert_eq!(Some(full), name.strip_suffix(suffix), "{}", path.display());
        }
        if let Some(v) = text(root, "apiVersion") {
            assert_eq!(v, defaults()["sf_api_version"], "{}", path.display());
        }
    }
    for root in [project_root(), order_status_root()] {
        let project = project(&root);
        assert_eq!(
            project["packageDirectories"],
            serde_json::json!([{ "path": "force-app", "default": true }]),
            "{}",
            root.display()
        );
        assert_eq!(
            project["sourceApiVersion"],
            defaults()["sf_api_version"],
            "{}",
            root.display()
        );
    }
}

#[test]
fn package_fields_are_the_configured_defaults_and_vice_versa() {
    let configured = configured_fields();
    let package: BTreeSet<String> = package_fields().into_keys().collect();
    let expected: BTreeSet<String> = configured
        .iter()
        .cloned()
        .chain(CONTRACT_ONLY_FIELDS.iter().map(|s| (*s).to_owned()))
        .collect();
    let missing: Vec<_> = expected.difference(&package).collect();
    let extra: Vec<_> = package.difference(&expected).collect();
    assert!(
        missing.is_empty(),
        "configured but not in the package: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "in the package but not configured: {extra:?}"
    );
    // The event object is the configured topic.
    assert_eq!(
        defaults()["sf_provision_event_channel"],
        format!("/event/{EVENT}")
    );
    assert!(
        source_root()
            .join(format!("objects/{EVENT}/{EVENT}.object-meta.xml"))
            .is_file()
    );
}

#[test]
fn field_types_are_the_ones_the_daemon_reads_and_writes() {
    let fields = package_fields();
    let d = defaults();
    let ty = |name: &str| -> (String, Option<u32>, bool) {
        let doc = field_xml(&fields, name);
        let root = doc.root_element();
        (
            text(root, "type").expect("type").to_owned(),
            text(root, "length").map(|l| l.parse().expect("length")),
            text(root, "required") == Some("true"),
        )
    };
    let event = |key: &str| format!("{EVENT}.{}", d[key]);
    let order = |key: &str| format!("Order.{}", d[key]);
    assert_eq!(
        ty(&event("sf_field_event_order_id")),
        ("Text".into(), Some(18), true),
        "OrderId__c is Text(18), required"
    );
    assert_eq!(
        ty(&event("sf_field_event_requested_by")),
        ("Text".into(), Some(80), false)
    );
    for key in ["sf_field_event_idem_key", "sf_field_event_correlation_id"] {
        let (t, len, _) = ty(&event(key));
        assert_eq!(t, "Text", "{key}");
        assert!(len.is_some_and(|l| l >= 36), "{key}: room for a UUID");
    }
    assert_eq!(ty(&format!("{EVENT}.Version__c")).0, "Number");
    // The daemon truncates messages to 255 characters.
    assert_eq!(
        ty(&order("sf_field_error_message")),
        ("Text".into(), Some(255), false)
    );
    assert_eq!(ty(&order("sf_field_error_code")).0, "Text");
    assert_eq!(ty(&order("sf_field_whmcs_order_id")).0, "Text");
    assert_eq!(ty(&order("sf_field_last_attempt_at")).0, "DateTime");

    let status = field_xml(&fields, &order("sf_field_activation_status"));
    assert_eq!(text(status.root_element(), "type"), Some("Picklist"));
    let restricted = child(status.root_element(), "valueSet").and_then(|v| text(v, "restricted"));
    assert_eq!(
        restricted,
        Some("true"),
        "Activation_Status__c is restricted"
    );
    assert_eq!(
        picklist_values(&status),
        ["Activating", "Activated", "Failed"]
    );
    let cycle = field_xml(
        &fields,
        &format!("Product2.{}", d["sf_field_product_whmcs_billing_cycle"]),
    );
    let cycles: BTreeSet<String> = picklist_values(&cycle).into_iter().collect();
    let whmcs: BTreeSet<String> = [
        "monthly",
        "quarterly",
        "semiannually",
        "annually",
        "biennially",
        "triennially",
        "onetime",
        "free",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        cycles, whmcs,
        "WHMCS billing cycles, as AddOrder spells them"
    );

    let object = read(&source_root().join(format!("objects/{EVENT}/{EVENT}.object-meta.xml")));
    let doc = Document::parse(&object).expect("event object");
    assert_eq!(text(doc.root_element(), "eventType"), Some("HighVolume"));
    assert_eq!(
        text(doc.root_element(), "publishBehavior"),
        Some("PublishAfterCommit"),
        "the daemon must read the committed Order"
    );
}

struct Flow {
    name: String,
    xml: String,
}

fn flows() -> Vec<Flow> {
    metadata_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".flow-meta.xml"))
        .map(|p| Flow {
            name: p.file_name().and_then(|n| n.to_str()).unwrap_or("").into(),
            xml: read(&p),
        })
        .collect()
}

#[test]
fn flows_set_activating_on_approval_and_publish_the_event() {
    let d = defaults();
    let activation = &d["sf_field_activation_status"];
    let package = package_fields();
    // The Order Status values the Flows rely on: the optional value set lists them, and the
    // set-up guide asks for them in orgs that keep their own values.
    let status_values = read(&order_status_file());
    let status_doc = Document::parse(&status_values).expect("OrderStatus");
    let statuses: Vec<&str> = children(status_doc.root_element(), "standardValue")
        .filter_map(|v| text(v, "fullName"))
        .collect();

    let mut sets_activating = false;
    let mut publishes = false;
    for flow in flows() {
        let doc = Document::parse(&flow.xml).expect("flow XML");
        let root = doc.root_element();
        assert_eq!(text(root, "status"), Some("Active"), "{}", flow.name);
        assert_eq!(
            text(root, "processType"),
            Some("AutoLaunchedFlow"),
            "{}",
            flow.name
        );
        let start = child(root, "start").expect("start");
        assert_eq!(text(start, "object"), Some("Order"), "{}", flow.name);
        assert_eq!(
            text(start, "doesRequireRecordChangedToMeetCriteria"),
            Some("true"),
            "{}: runs only when the Order changes to meet its conditions",
            flow.name
        );
        // Every connector points at an element of the flow.
        let elements: BTreeSet<&str> = root.children().filter_map(|c| text(c, "name")).collect();
        for target in root
            .descendants()
            .filter(|n| n.has_tag_name((METADATA_NS, "targetReference")))
            .filter_map(|n| n.text())
        {
            assert!(
                elements.contains(target),
                "{}: no element {target}",
                flow.name
            );
        }
        // Order fields used in filters exist (standard ones, or the package's).
        for f in children(start, "filters") {
            let field = text(f, "field").expect("filter field");
            assert!(
                field == "Status" || package.contains_key(&format!("Order.{field}")),
                "{}: filter on unknown Order field {field}",
                flow.name
            );
            if field == "Status" {
                let v = child(f, "value").and_then(|v| text(v, "stringValue"));
                assert!(
                    v.is_some_and(|v| statuses.contains(&v)),
                    "{}: Status value {v:?} is not in OrderStatus {statuses:?}",
                    flow.name
                );
            }
        }
        let filter = |field: &str, op: &str, value: &str| {
            children(start, "filters").any(|f| {
                text(f, "field") == Some(field)
                    && text(f, "operator") == Some(op)
                    && child(f, "value")
                        .and_then(|v| v.first_element_child())
                        .and_then(|v| v.text())
                        == Some(value)
            })
        };
        match text(start, "triggerType") {
            Some("RecordBeforeSave") => {
                assert!(filter("Status", "EqualTo", "Approved"), "{}", flow.name);
                assert!(
                    filter(activation, "IsNull", "true"),
                    "{}: only Orders never provisioned",
                    flow.name
                );
                let assigns = children(root, "assignments")
                    .flat_map(|a| children(a, "assignmentItems"))
                    .any(|i| {
                        text(i, "assignToReference") == Some(&format!("$Record.{activation}"))
                            && child(i, "value").and_then(|v| text(v, "stringValue"))
                                == Some("Activating")
                    });
                assert!(assigns, "{}: sets {activation} = Activating", flow.name);
                sets_activating = true;
            }
            Some("RecordAfterSave") => {
                assert!(
                    filter(activation, "EqualTo", "Activating"),
                    "{}: publishes when the Order becomes Activating (approval or retry)",
                    flow.name
                );
                let create = children(root, "recordCreates")
                    .find(|c| text(*c, "object") == Some(EVENT))
                    .unwrap_or_else(|| panic!("{}: creates no {EVENT}", flow.name));
                let assigned: BTreeMap<&str, Option<&str>> = children(create, "inputAssignments")
                    .map(|a| {
                        (
                            text(a, "field").expect("field"),
                            child(a, "value").and_then(|v| text(v, "elementReference")),
                        )
                    })
                    .collect();
                for field in assigned.keys() {
                    assert!(
                        package.contains_key(&format!("{EVENT}.{field}")),
                        "{}: assigns unknown event field {field}",
                        flow.name
                    );
                }
                assert_eq!(
                    assigned.get(d["sf_field_event_order_id"].as_str()),
                    Some(&Some("$Record.Id")),
                    "{}: OrderId__c is the Order's Id",
                    flow.name
                );
                for key in ["sf_field_event_idem_key", "sf_field_event_correlation_id"] {
                    assert!(
                        assigned.contains_key(d[key].as_str()),
                        "{}: sets {}",
                        flow.name,
                        d[key]
                    );
                }
                publishes = true;
            }
            other => panic!("{}: unexpected trigger {other:?}", flow.name),
        }
    }
    assert!(sets_activating, "no Flow sets Activating on approval");
    assert!(publishes, "no Flow publishes {EVENT}");
    assert!(statuses.contains(&"Approved") && statuses.contains(&"Activated"));
}

#[test]
fn permission_set_grants_what_the_daemon_uses() {
    let path =
        source_root().join("permissionsets/WHMCS_Provisioner_Integration.permissionset-meta.xml");
    let xml = read(&path);
    let doc = Document::parse(&xml).expect("permission set XML");
    let root = doc.root_element();
    let fls: BTreeMap<String, (bool, bool)> = children(root, "fieldPermissions")
        .map(|f| {
            (
                text(f, "field").expect("field").to_owned(),
                (
                    text(f, "readable") == Some("true"),
                    text(f, "editable") == Some("true"),
                ),
            )
        })
        .collect();
    // Field-level security covers every custom field but the event's (platform event fields
    // have none): Order fields are written, Account and Product2 fields only read.
    let expected: BTreeSet<String> = configured_fields()
        .into_iter()
        .filter(|f| !f.starts_with(EVENT))
        .collect();
    assert_eq!(fls.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (field, (read, edit)) in &fls {
        assert!(read, "{field} readable");
        assert_eq!(*edit, field.starts_with("Order."), "{field} editable");
    }
    let objects: BTreeMap<String, (bool, bool)> = children(root, "objectPermissions")
        .map(|o| {
            (
                text(o, "object").expect("object").to_owned(),
                (
                    text(o, "allowRead") == Some("true"),
                    text(o, "allowEdit") == Some("true"),
                ),
            )
        })
        .collect();
    for (object, edit) in [
        ("Order", true),
        ("Account", false),
        ("Product2", false),
        ("OrderItem", false),
        (EVENT, false),
    ] {
        assert_eq!(
            objects.get(object),
            Some(&(true, edit)),
            "{object}: read{}",
            if edit { " and edit" } else { " only" }
        );
    }
    for o in children(root, "objectPermissions") {
        assert_eq!(text(o, "allowDelete"), Some("false"));
        assert_eq!(text(o, "modifyAllRecords"), Some("false"));
    }
    let perms: BTreeSet<&str> = children(root, "userPermissions")
        .filter(|p| text(*p, "enabled") == Some("true"))
        .filter_map(|p| text(p, "name"))
        .collect();
    assert!(perms.contains("ApiEnabled"), "{perms:?}");
    assert!(
        perms.contains("ActivateOrder"),
        "the write-back sets Status = Activated"
    );
}

/// Why deploying `path` would delete or overwrite metadata the org already has, if it would:
/// destructive-changes manifests, standard value sets (they replace every value of a standard
/// picklist such as Order Status), GlobalValueSets named after standard value sets, profiles,
/// org settings, and definitions of standard objects or fields.
fn replaces_org_metadata(path: &Path) -> Option<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let stem = name.split('.').next().unwrap_or_default();
    let in_dir = |dir: &str| path.components().any(|c| c.as_os_str() == dir);
    let has_suffix = |suffix: &str| {
        lower.ends_with(&format!(".{suffix}")) || lower.ends_with(&format!(".{suffix}-meta.xml"))
    };
    let standard_set = |n: &str| {
        STANDARD_VALUE_SETS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(n))
    };
    let custom = |n: &str| {
        ["__c", "__e", "__mdt", "__b", "__x"]
            .iter()
            .any(|s| n.ends_with(s))
    };
    if lower.starts_with("destructivechanges") && lower.ends_with(".xml") {
        return Some("a destructive-changes manifest deletes components of the org".into());
    }
    if has_suffix("standardvalueset") || in_dir("standardValueSets") {
        return Some(format!(
            "the StandardValueSet {stem} replaces every value of a standard picklist"
        ));
    }
    if has_suffix("profile") || in_dir("profiles") {
        return Some(format!("the Profile {stem} overwrites the org's profile"));
    }
    if has_suffix("settings") || in_dir("settings") {
        return Some(format!("the {stem} Settings change org-wide configuration"));
    }
    if has_suffix("globalvalueset") && standard_set(stem) {
        return Some(format!(
            "the GlobalValueSet {stem} stands in for a standard value set"
        ));
    }
    if has_suffix("field") && !custom(stem) {
        return Some(format!(
            "{stem} is a standard field: its definition overwrites the org's"
        ));
    }
    if has_suffix("object") && !custom(stem) {
        return Some(format!(
            "{stem} is a standard object: its definition overwrites the org's"
        ));
    }
    // The content decides too, whatever the file is called.
    let xml = std::fs::read_to_string(path).ok()?;
    let doc = Document::parse(&xml).ok()?;
    let root = doc.root_element();
    let full = text(root, "fullName").unwrap_or(stem);
    match root.tag_name().name() {
        "StandardValueSet" => Some(format!(
            "{name} is a StandardValueSet: it replaces every value of a standard picklist"
        )),
        "Profile" => Some(format!("{name} is a Profile: it overwrites the org's")),
        "GlobalValueSet" if standard_set(full) => Some(format!(
            "{name} is a GlobalValueSet named {full}, a standard value set"
        )),
        _ => None,
    }
}

#[test]
fn deploying_the_package_replaces_nothing_in_the_org() {
    // Every package directory counts: a deploy without `--source-dir` sends them all.
    let deployed = metadata_files();
    assert!(deployed.len() >= 17, "metadata files: {deployed:?}");
    let replacing: Vec<String> = deployed
        .iter()
        .filter_map(|p| replaces_org_metadata(p).map(|why| format!("{}: {why}", p.display())))
        .collect();
    assert!(
        replacing.is_empty(),
        "deployed by default, but deletes or overwrites the org's metadata:\n{}",
        replacing.join("\n")
    );

    // The Order Status value set is its own sfdx project, outside every package directory
    // of `salesforce/`: only deploying `salesforce/optional/order-status` sends it.
    let canonical =
        |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let optional = canonical(&order_status_root());
    for (dir, _) in package_dirs(&project_root()) {
        let dir = canonical(&dir);
        assert!(
            !optional.starts_with(&dir) && !dir.starts_with(&optional),
            "package directory {} overlaps the optional {}",
            dir.display(),
            optional.display()
        );
    }
    assert!(
        !deployed.contains(&order_status_file()),
        "OrderStatus is deployed by default"
    );
    // The check recognises that value set for what it is.
    let why = replaces_org_metadata(&order_status_file());
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("StandardValueSet")),
        "OrderStatus not recognised as replacing the org's values: {why:?}"
    );
}
