//! Fuzzes what an attacker controls at intake: the dbt body and its Authorization header
//! (signature check, then parsing, as a dbt Cloud webhook and as a dbt Core invocation),
//! and the Mode body (URL path extraction). None of it
//! may panic, and a body signed with the wrong key must never verify.
#![no_main]

use freshet::config::Secret;
use freshet::ingest::{dbt_cloud, dbt_core, mode, signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let secrets = [Secret::new("fuzz-secret")];
    let header = String::from_utf8_lossy(header);
    if signature::verify(Some(&header), body, &secrets).is_ok() {
        // Only the right key can produce a valid signature.
        assert_eq!(header.trim().to_ascii_lowercase(), signature::sign(b"fuzz-secret", body));
    }
    let right = signature::sign(b"fuzz-secret", body);
    assert!(signature::verify(Some(&right), body, &secrets).is_ok());
    assert!(signature::verify(Some(&signature::sign(b"other", body)), body, &secrets).is_err());

    if let Ok(event) = dbt_cloud::parse(body, "2026-01-01T00:00:00Z".into()) {
        assert!(event.id.starts_with("dbt:"));
        let _ = event.to_json();
    }
    if let Ok(event) = dbt_core::parse(body, "2026-01-01T00:00:00Z".into()) {
        assert!(event.id.starts_with("dbt-core:"));
        assert!(event.fields["failures"].as_array().unwrap().len() <= 50);
        let _ = event.to_json();
    }
    if let Ok(event) = mode::parse(body, "acme", "2026-01-01T00:00:00Z".into()) {
        let path = event.fields["resource_path"].as_str().unwrap();
        assert!(path.starts_with("/api/acme/"), "{path}");
        assert!(!path.contains(".."), "{path}");
    }
});
