//! Root test of `slicelb bench --quick`: it runs, and its report has every section with a
//! filled table and its plots. Benchmarks are not tests: nothing here looks at a timing.

use slicelb_lab::bench::{Plan, run_plan};

/// The report's sections: title, and the rows (cells) of each table under it.
fn sections(markdown: &str) -> Vec<(String, Vec<Vec<Vec<String>>>)> {
    let mut sections: Vec<(String, Vec<Vec<Vec<String>>>)> = Vec::new();
    let mut in_table = false;
    for line in markdown.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            sections.push((title.to_string(), Vec::new()));
            in_table = false;
            continue;
        }
        let Some((_, tables)) = sections.last_mut() else {
            continue;
        };
        if line.starts_with('|') {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            if !in_table {
                tables.push(Vec::new());
                in_table = true;
            }
            tables.last_mut().expect("just pushed").push(cells);
        } else {
            in_table = false;
        }
    }
    sections
}

#[test]
fn lab_bench_quick_writes_a_report_with_every_section_filled() {
    slicelb_lab::lab::require_root("lab_bench_quick_writes_a_report_with_every_section_filled");
    let out = tempfile::tempdir().expect("temp dir");
    let report = run_plan(&Plan::quick(), true, out.path()).expect("quick bench runs");
    assert!(
        report.exists(),
        "report {} was not written",
        report.display()
    );
    let markdown = std::fs::read_to_string(&report).expect("read report");
    assert!(
        markdown.contains("- command: `"),
        "the report names its command"
    );
    assert!(
        markdown.contains("- machine: "),
        "the report names the machine"
    );

    let sections = sections(&markdown);
    let titles: Vec<&str> = sections.iter().map(|(t, _)| t.as_str()).collect();
    for expected in [
        "1. Per-packet cost",
        "2. Throughput",
        "3. Connections",
        "4. Side by side",
        "5. Control plane",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(expected)),
            "section {expected:?} missing; sections: {titles:?}"
        );
    }
    for (title, tables) in &sections {
        assert!(!tables.is_empty(), "section {title:?} has no table");
        for table in tables {
            // Header, separator, then at least one data row.
            assert!(table.len() >= 3, "a table of {title:?} has no data row");
            let width = table[0].len();
            for row in &table[2..] {
                assert_eq!(row.len(), width, "{title:?}: ragged row {row:?}");
                let measured = row.iter().skip(1).any(|c| {
                    c.trim_end_matches(['x', '%'])
                        .parse::<f64>()
                        .is_ok_and(f64::is_finite)
                });
                assert!(measured, "{title:?}: row {row:?} has no measured number");
                assert!(
                    !row.iter().any(|c| c.contains("not measured")),
                    "{title:?}: row {row:?} was not measured"
                );
            }
        }
    }
    assert!(
        !markdown.contains("WARNING"),
        "a case measured the wrong path (a hit not balanced, a miss modified, a reply not \
         translated):\n{markdown}"
    );

    // Every balancer moved traffic in the lab: packets reached the sinks rewritten to a
    // backend, connections completed.
    for (title, tables) in &sections {
        if !(title.starts_with("2.") || title.starts_with("3.")) {
            continue;
        }
        for table in tables {
            let column = table[0]
                .iter()
                .position(|h| h == "balanced correctly" || h == "completed")
                .unwrap_or_else(|| panic!("{title:?}: no count column in {:?}", table[0]));
            let delivered = table[0].iter().position(|h| h == "delivered");
            for row in &table[2..] {
                // The forwarding floor balances nothing; what it moved is what it delivered.
                if row[1] == "forward-floor" {
                    let delivered =
                        delivered.unwrap_or_else(|| panic!("{title:?}: no delivered column"));
                    assert_eq!(row[column], "n/a (not balanced)", "{title:?}: {row:?}");
                    assert!(
                        row[delivered].parse::<u64>().is_ok_and(|n| n > 0),
                        "{title:?}: the forwarding floor delivered nothing: {row:?}"
                    );
                    continue;
                }
                let value: f64 = row[column]
                    .trim_end_matches('%')
                    .parse()
                    .unwrap_or_else(|_| {
                        panic!("{title:?}: {row:?} column {column} is not a number")
                    });
                assert!(
                    value > 0.0,
                    "{title:?}: {} with {} services moved nothing: {row:?}",
                    row[1],
                    row[0]
                );
            }
        }
    }

    // Socket-level slicelb (the client as a pod under the cgroup hooks) has its row in the
    // connections table, with connections made (the bench itself fails the case unless the
    // hooks translated every completed one), and its target is stated beside nftables.
    let (_, connection_tables) = sections
        .iter()
        .find(|(title, _)| title.starts_with("3."))
        .expect("a connections section");
    let socket_rows: Vec<&Vec<String>> = connection_tables
        .iter()
        .flat_map(|t| &t[2..])
        .filter(|row| row[1] == "slicelb-socket")
        .collect();
    assert!(
        !socket_rows.is_empty(),
        "no slicelb-socket row in the connections table:\n{markdown}"
    );
    // The floor (no balancer) has its row beside them.
    assert!(
        connection_tables
            .iter()
            .flat_map(|t| &t[2..])
            .any(|row| row[1] == "direct"),
        "no direct row in the connections table:\n{markdown}"
    );
    for row in socket_rows {
        let per_second: f64 = row[2]
            .parse()
            .unwrap_or_else(|_| panic!("slicelb-socket connections/s is not a number: {row:?}"));
        assert!(
            per_second > 0.0,
            "slicelb-socket made no connection: {row:?}"
        );
    }
    let target = markdown
        .lines()
        .find(|l| l.contains("Target: pod → ClusterIP connections/s at 1 000 services"))
        .unwrap_or_else(|| panic!("no pod → ClusterIP target line:\n{markdown}"));
    assert!(
        (target.contains("— met") || target.contains("— NOT met")) && target.contains("x nftables"),
        "the target line states no verdict and ratio: {target}"
    );
    assert!(
        target.contains("direct (no balancer) / nftables = "),
        "the target line states no upper bound: {target}"
    );
    assert!(
        markdown.contains("Against the floor (direct: no balancer, the network path alone)")
            && markdown.contains("slicelb-socket ")
            && markdown.contains("x direct (connect() p50 "),
        "no balancer is set against the floor:\n{markdown}"
    );

    // Every plot the report links exists as SVG and PNG.
    for link in markdown.lines().filter_map(|l| l.strip_prefix("![")) {
        let name = link.split(']').next().expect("plot name");
        for ext in ["svg", "png"] {
            let path = out.path().join(format!("{name}.{ext}"));
            assert!(path.exists(), "plot {} is missing", path.display());
        }
    }
    assert!(
        markdown.matches("![").count() >= 4,
        "expected a plot for per-packet, throughput, connections and programming:\n{markdown}"
    );
}
