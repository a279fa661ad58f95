//! Rule evaluation cost: one event through 1, 10, 100 and 1,000 rules the size of the
//! shipped examples (copies of rules/*.rhai), and the reload after one file of 1,000
//! changed. Run with `cargo bench --bench rule_evaluation`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use freshet::rules::engine::build_engine;
use freshet::rules::load::load_dir;

fn rules(c: &mut Criterion) {
    let examples: Vec<(String, String)> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "rhai"))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().to_string(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
    let sample = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/samples/dbt-job-run-completed.json"),
    )
    .unwrap();
    let event = freshet::ingest::dbt_cloud::parse(&sample, "2026-11-25T00:00:00Z".into())
        .unwrap()
        .to_json();
    let vars = serde_json::json!({"finance_channel": "#finance", "revenue_floor": 1000.0});
    let engine = build_engine(1_000_000);
    let mut group = c.benchmark_group("evaluate_one_event");
    for count in [1usize, 10, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..count {
            let (name, source) = &examples[i % examples.len()];
            std::fs::write(dir.path().join(format!("{i:03}_{name}")), source).unwrap();
        }
        let set = load_dir(&engine, dir.path(), None);
        assert!(set.errors.is_empty() && set.rules.len() == count);
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| set.evaluate(&engine, &event, &vars));
        });
    }
    group.finish();

    // What a hot reload does after one edit: list the folder, read and hash every file,
    // compile the one that changed.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        let (name, source) = &examples[i % examples.len()];
        std::fs::write(dir.path().join(format!("{i:04}_{name}")), source).unwrap();
    }
    let (name, source) = &examples[0];
    let edited = dir.path().join(format!("0000_{name}"));
    let mut current = load_dir(&engine, dir.path(), None);
    assert!(current.errors.is_empty() && current.rules.len() == 1000);
    // What every reload did before it kept unchanged files: compile the whole folder.
    c.bench_function("load_all_of/1000", |b| {
        b.iter(|| load_dir(&engine, dir.path(), None));
    });
    let mut version = 0u64;
    c.bench_function("reload_one_changed_of/1000", |b| {
        b.iter(|| {
            version += 1;
            std::fs::write(&edited, format!("{source}\n// edit {version}\n")).unwrap();
            current = load_dir(&engine, dir.path(), Some(&current));
            assert_eq!(current.compiled, 1);
        });
    });
}

criterion_group!(benches, rules);
criterion_main!(benches);
