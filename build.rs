//! Marks the build for the tests that need a PostgreSQL server: with
//! `FRESHET_TEST_DATABASE_URL` set when the tests are built (`source .ci/postgres.sh`
//! starts a throwaway server and sets it), `cfg(freshet_postgres_tests)` is on and they
//! run (and fail without their server); without it `cargo test` lists each as ignored,
//! with the reason, instead of letting it pass without running. Likewise for the test
//! that needs OpenLineage's Python client (`FRESHET_TEST_OPENLINEAGE_PYTHON`) and the
//! console's browser test (`FRESHET_TEST_CHROMEDRIVER`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(freshet_postgres_tests)");
    println!("cargo::rerun-if-env-changed=FRESHET_TEST_DATABASE_URL");
    if std::env::var_os("FRESHET_TEST_DATABASE_URL").is_some() {
        println!("cargo::rustc-cfg=freshet_postgres_tests");
    }
    // The same for the test that drives OpenLineage's own Python client: a Python with
    // openlineage-python installed (`.ci/run` makes a venv for it).
    println!("cargo::rustc-check-cfg=cfg(freshet_openlineage_tests)");
    println!("cargo::rerun-if-env-changed=FRESHET_TEST_OPENLINEAGE_PYTHON");
    if std::env::var_os("FRESHET_TEST_OPENLINEAGE_PYTHON").is_some() {
        println!("cargo::rustc-cfg=freshet_openlineage_tests");
    }
    // And for the console's browser test: chromedriver (Debian's chromium-driver).
    println!("cargo::rustc-check-cfg=cfg(freshet_browser_tests)");
    println!("cargo::rerun-if-env-changed=FRESHET_TEST_CHROMEDRIVER");
    if std::env::var_os("FRESHET_TEST_CHROMEDRIVER").is_some() {
        println!("cargo::rustc-cfg=freshet_browser_tests");
    }
}
