//! The documentation against the code it describes: every datapath reason and socket-level
//! outcome has a row in docs/troubleshooting.md, and every `slicelb` command line in the
//! README's and the docs' code blocks names a subcommand and flags the CLI has.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::CommandFactory as _;
use lb_common::{Reason, SocketCounter};
use slicelb::cli::Cli;

/// The documents whose `slicelb` command lines are checked, relative to the workspace.
const DOCUMENTS: [&str; 3] = ["README.md", "docs/deploy.md", "docs/troubleshooting.md"];
const TROUBLESHOOTING: &str = "docs/troubleshooting.md";

fn read(document: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(document);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"))
}

/// A `slicelb` invocation written in a code block: the subcommand and the long flags given.
#[derive(Debug, PartialEq, Eq)]
struct Invocation {
    line: String,
    subcommand: String,
    flags: Vec<String>,
}

/// Every `slicelb SUBCOMMAND ...` in the fenced code blocks of `markdown`: at the start of a
/// line (after an optional `$ ` prompt) or after `--` (`kubectl exec ... -- slicelb ...`).
/// Captured output (`slicelb demo: ...`) is skipped, and a command ends at a comment or a
/// pipe.
fn invocations(markdown: &str) -> Vec<Invocation> {
    let mut found = Vec::new();
    let mut in_block = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let command = line.trim_start();
        let command = command.strip_prefix("$ ").unwrap_or(command);
        let tokens: Vec<&str> = command
            .split_whitespace()
            .take_while(|t| !t.starts_with('#') && !["|", "&&", ";"].contains(t))
            .collect();
        let Some(start) = tokens
            .iter()
            .enumerate()
            .position(|(i, t)| *t == "slicelb" && (i == 0 || tokens[i - 1] == "--"))
        else {
            continue;
        };
        let Some(subcommand) = tokens.get(start + 1) else {
            continue;
        };
        if subcommand.ends_with(':') {
            continue;
        }
        let flags = tokens[start + 2..]
            .iter()
            .map(|t| t.trim_matches(|c| "[]()".contains(c)))
            .filter(|t| t.starts_with("--"))
            .map(|t| t.split('=').next().unwrap_or(t).to_owned())
            .collect();
        found.push(Invocation {
            line: line.to_owned(),
            subcommand: (*subcommand).to_owned(),
            flags,
        });
    }
    found
}

#[test]
fn invocations_are_read_from_code_blocks_only() {
    let markdown = "\
Run `slicelb nothing --here` in prose.

```sh
kubectl -n slicelb-system exec POD -c agent -- slicelb services -o json
slicelb stats | grep --count lb_   # a pipe ends the command
$ slicelb trace --from 198.18.0.2 --to=198.18.100.10:80
slicelb demo: captured output, not a command
slicelb agent --iface IFACE [--iface IFACE …]    (or --iface a,b)
```
";
    let found: Vec<(String, Vec<String>)> = invocations(markdown)
        .into_iter()
        .map(|i| (i.subcommand, i.flags))
        .collect();
    let owned = |flags: &[&str]| flags.iter().map(|f| f.to_string()).collect::<Vec<_>>();
    assert_eq!(
        found,
        [
            ("services".to_owned(), owned(&[])),
            ("stats".to_owned(), owned(&[])),
            ("trace".to_owned(), owned(&["--from", "--to"])),
            (
                "agent".to_owned(),
                owned(&["--iface", "--iface", "--iface"])
            ),
        ]
    );
}

#[test]
fn documented_commands_use_subcommands_and_flags_slicelb_has() {
    let cli = Cli::command();
    let mut checked = 0;
    for document in DOCUMENTS {
        for invocation in invocations(&read(document)) {
            let subcommand = cli
                .find_subcommand(&invocation.subcommand)
                .unwrap_or_else(|| {
                    panic!(
                        "{document}: `slicelb {}` is not a subcommand of slicelb, in: {}",
                        invocation.subcommand, invocation.line
                    )
                });
            let longs: BTreeSet<String> = subcommand
                .get_arguments()
                .filter_map(|arg| arg.get_long())
                .map(|long| format!("--{long}"))
                .chain(["--help".to_owned()])
                .collect();
            for flag in &invocation.flags {
                assert!(
                    longs.contains(flag),
                    "{document}: `slicelb {}` has no {flag} (it has {longs:?}), in: {}",
                    invocation.subcommand,
                    invocation.line
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} slicelb command lines found in {DOCUMENTS:?}: is the parser still \
         reading the code blocks?"
    );
}

#[test]
fn troubleshooting_explains_every_reason_and_socket_outcome() {
    let text = read(TROUBLESHOOTING);
    let names = Reason::ALL
        .iter()
        .map(|r| r.name())
        .chain(SocketCounter::ALL.iter().map(|c| c.name()));
    let missing: Vec<&str> = names
        .filter(|name| !text.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "{TROUBLESHOOTING} has no table row (| `name` | meaning |) for {missing:?}: say what \
         each counter in `slicelb stats` means"
    );
}
