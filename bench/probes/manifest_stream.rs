//! Memory and time of reading a large dbt manifest.json for the failures' owners
//! (docs/behaviour.md section 13): freshet's streamed read (`ManifestFacts::read`, which
//! keeps only the failed nodes and the nodes with owners) against parsing the whole file
//! into a `serde_json::Value`. The manifest is written to a temporary file shaped like a
//! real one (tests/fixtures/dbt/manifest.json's nodes, repeated with new ids, plus
//! macros) of about `MB` megabytes (default 50). Peak memory is the process's VmHWM, read
//! after each step: the streamed read goes first, as the high-water mark only rises.
//!   cargo run --release --example manifest_stream            # MB=50
use std::collections::HashSet;
use std::io::Write;
use std::time::Instant;

use freshet::dbt_artifacts::ManifestFacts;
use serde_json::Value;

fn high_water_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let megabytes: usize = std::env::var("MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let fixture: Value =
        serde_json::from_slice(include_bytes!("../../tests/fixtures/dbt/manifest.json"))
            .expect("the fixture is JSON");
    let nodes = fixture["nodes"].as_object().expect("nodes").clone();
    let macros = fixture["macros"].clone();
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("manifest.json");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        write!(
            file,
            "{{\"metadata\":{},\"macros\":{},\"nodes\":{{",
            fixture["metadata"], macros
        )
        .unwrap();
        let mut written = 0usize;
        let mut copy = 0usize;
        while written < megabytes << 20 {
            for (id, node) in &nodes {
                let entry = format!(
                    "{}\"{id}_{copy}\":{node}",
                    if written == 0 { "" } else { "," }
                );
                written += entry.len();
                file.write_all(entry.as_bytes()).unwrap();
            }
            copy += 1;
        }
        write!(file, "}},\"groups\":{}}}", fixture["groups"]).unwrap();
    }
    drop(fixture);
    drop(nodes);
    drop(macros);
    let size = std::fs::metadata(&path).unwrap().len();
    let before = high_water_kib();
    let wanted: HashSet<String> = ["model.shop.revenue_7".to_string()].into();
    let started = Instant::now();
    let facts = ManifestFacts::read(std::fs::File::open(&path).unwrap(), &wanted).expect("read");
    let streamed_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(facts.node("model.shop.revenue_7").is_some());
    drop(facts);
    let after_streamed = high_water_kib();
    let started = Instant::now();
    let whole: Value =
        serde_json::from_reader(std::io::BufReader::new(std::fs::File::open(&path).unwrap()))
            .expect("parse");
    let whole_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(whole["nodes"].get("model.shop.revenue_7").is_some());
    let after_whole = high_water_kib();
    println!("manifest_bytes {size}");
    println!("streamed_ms {streamed_ms:.0}");
    println!(
        "streamed_peak_growth_mib {:.1}",
        (after_streamed - before) as f64 / 1024.0
    );
    println!("whole_value_ms {whole_ms:.0}");
    println!(
        "whole_value_peak_growth_mib {:.1}",
        (after_whole - after_streamed) as f64 / 1024.0
    );
}
