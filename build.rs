//! Marks the build for the tests that need a PostgreSQL server: with
//! `FRESHET_TEST_DATABASE_URL` set when the tests are built (`source .ci/postgres.sh`
//! starts a throwaway server and sets it), `cfg(freshet_postgres_tests)` is on and they
//! run (and fail without their server); without it `cargo test` lists each as ignored,
//! with the reason, instead of letting it pass without running.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(freshet_postgres_tests)");
    println!("cargo::rerun-if-env-changed=FRESHET_TEST_DATABASE_URL");
    if std::env::var_os("FRESHET_TEST_DATABASE_URL").is_some() {
        println!("cargo::rustc-cfg=freshet_postgres_tests");
    }
}
