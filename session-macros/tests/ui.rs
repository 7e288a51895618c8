//! Compile-time behaviour of `#[derive(Session)]`: accepted forms in
//! `tests/ui/pass`, one mistake per file with its expected error in
//! `tests/ui/fail`. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p tg-session-macros --test ui` and read them before committing.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
