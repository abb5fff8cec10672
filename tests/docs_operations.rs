//! docs/operations.md documents every flag of `edgeplane run` with its
//! default; this test keeps the table and the binary in step (a flag added,
//! removed or given another default fails it).

use std::collections::BTreeMap;
use std::process::Command;

/// flag → default ("" when none), from `--help` output.
fn from_help(help: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim();
        let flag_line = t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", "));
        if flag_line && line.starts_with("  ") {
            let long = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .expect("a long flag")
                .trim_end_matches(',');
            let name = long.trim_start_matches("--").to_string();
            out.insert(name.clone(), String::new());
            current = Some(name);
        } else if let (Some(d), Some(c)) = (
            t.strip_prefix("[default: ")
                .and_then(|d| d.strip_suffix(']')),
            &current,
        ) {
            out.insert(c.clone(), d.to_string());
        }
    }
    out.remove("help");
    out
}

/// flag → default from the doc's flags table (`| `--flag` … | `default` | … |`).
fn from_doc(doc: &str) -> BTreeMap<String, String> {
    let section = doc
        .split("## Flags of `edgeplane run`")
        .nth(1)
        .expect("a flags section")
        .split("\n## ")
        .next()
        .unwrap_or("");
    let mut out = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let name = cells[0]
            .trim_start_matches("| `--")
            .split('`')
            .next()
            .unwrap_or("")
            .to_string();
        let default = match cells.get(1).copied().unwrap_or("") {
            "—" => String::new(),
            d => d
                .trim_start_matches('`')
                .split('`')
                .next()
                .unwrap_or("")
                .to_string(),
        };
        out.insert(name, default);
    }
    out
}

#[test]
fn every_run_flag_is_documented_with_its_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeplane"))
        .args(["run", "--help"])
        .output()
        .expect("running edgeplane run --help");
    assert!(out.status.success());
    let help = from_help(&String::from_utf8_lossy(&out.stdout));
    assert!(
        help.len() > 25,
        "parsed only {} flags from --help",
        help.len()
    );
    assert_eq!(help["conntrack-size"], "1048576");
    assert_eq!(help["in-cluster"], "");
    let doc = from_doc(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
            .expect("docs/operations.md"),
    );
    for (flag, default) in &help {
        match doc.get(flag) {
            None => panic!("--{flag} (default {default:?}) is not in docs/operations.md"),
            Some(d) => assert_eq!(d, default, "default of --{flag} in docs/operations.md"),
        }
    }
    for flag in doc.keys() {
        assert!(
            help.contains_key(flag),
            "docs/operations.md documents --{flag}, which `run` does not have"
        );
    }
}

#[test]
fn troubleshooting_names_only_real_replay_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeplane"))
        .args(["replay", "--help"])
        .output()
        .expect("running edgeplane replay --help");
    let help = from_help(&String::from_utf8_lossy(&out.stdout));
    assert!(help.contains_key("input") && help.contains_key("verdicts"));
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/troubleshooting.md"
    ))
    .expect("docs/troubleshooting.md");
    let section = doc
        .split("## 4. Replay")
        .nth(1)
        .expect("a replay section")
        .split("\n## ")
        .next()
        .unwrap_or("");
    let mut seen = 0;
    for (i, _) in section.match_indices("--") {
        let name: String = section[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        if name.is_empty() {
            continue;
        }
        seen += 1;
        assert!(
            help.contains_key(&name),
            "troubleshooting.md: replay has no --{name}"
        );
        if name == "conntrack-size" {
            assert!(section.contains(&format!("default {}", help[&name])));
        }
    }
    assert!(seen >= 10, "only {seen} flags mentioned");
}
