//! Compile-time behaviour of `#[derive(Session)]`: accepted forms in
//! `ui-tests/pass`, one mistake per file with its expected error in
//! `ui-tests/fail`. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test --test ui` and read them before committing.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui-tests/pass/*.rs");
    cases.compile_fail("ui-tests/fail/*.rs");
}
