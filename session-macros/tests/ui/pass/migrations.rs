//! Every `version` / `migrate(...)` form: a `From` chain, `with` functions
//! returning the next shape or a `Result`, a version alone, quoted types,
//! and an enum; each checked through the generated `Session::migrate`.
use serde::{Deserialize, Serialize};
use tg_session::{MigrationError, Session};

#[derive(Deserialize)]
struct CounterV1 {
    apple: u32,
}

#[derive(Deserialize)]
struct CounterV2 {
    apples: u64,
}

impl From<CounterV1> for CounterV2 {
    fn from(old: CounterV1) -> Self {
        Self {
            apples: u64::from(old.apple),
        }
    }
}

#[derive(Session, Serialize, Deserialize, Debug, PartialEq)]
#[session(
    key = "counter",
    version = 3,
    migrate(from = CounterV1, version = 1),
    migrate(from = CounterV2, version = 2, with = from_v2)
)]
struct Counter {
    #[session(default = 1)]
    apples: u32,
    name: Option<String>,
}

fn from_v2(old: CounterV2) -> Result<Counter, std::num::TryFromIntError> {
    Ok(Counter {
        apples: u32::try_from(old.apples)?,
        name: None,
    })
}

/// A version alone tags new records; untagged ones are read as this shape.
#[derive(Session, Serialize, Deserialize, Default, Debug, PartialEq)]
#[session(key = "tagged", version = 1)]
struct Tagged {
    n: u8,
}

#[derive(Deserialize)]
enum StepV1 {
    Start,
    AskName,
}

#[derive(Session, Serialize, Deserialize, Debug, PartialEq)]
#[session(key = "step", version = 2, migrate(from = "StepV1", version = 1, with = "step_from_v1"))]
enum Step {
    #[session(default)]
    Start,
    AskedName,
    AskedAge,
}

fn step_from_v1(old: StepV1) -> Step {
    match old {
        StepV1::Start => Step::Start,
        StepV1::AskName => Step::AskedName,
    }
}

fn main() {
    assert_eq!(Counter::SCHEMA_VERSION, Some(3));
    let want = Counter { apples: 4, name: None };
    assert_eq!(Counter::migrate(None, br#"{"apple":4}"#).ok(), Some(Counter { apples: 4, name: None }));
    assert_eq!(Counter::migrate(Some(1), br#"{"apple":4}"#).ok(), Some(want));
    assert_eq!(Counter::migrate(Some(2), br#"{"apples":5}"#).ok().map(|c| c.apples), Some(5));
    assert!(matches!(
        Counter::migrate(Some(2), br#"{"apples":9999999999}"#),
        Err(MigrationError::Convert { version: 2, .. })
    ));
    assert!(matches!(
        Counter::migrate(Some(1), br#"{"apples":1}"#),
        Err(MigrationError::Decode { version: 1, .. })
    ));
    assert!(matches!(
        Counter::migrate(Some(7), b"{}"),
        Err(MigrationError::UnknownVersion { version: 7, declared: "1, 2, 3", .. })
    ));

    assert_eq!(Tagged::SCHEMA_VERSION, Some(1));
    assert_eq!(Tagged::migrate(None, br#"{"n":3}"#).ok(), Some(Tagged { n: 3 }));

    assert_eq!(Step::migrate(None, br#""AskName""#).ok(), Some(Step::AskedName));
    assert_eq!(Step::migrate(Some(2), br#""AskedAge""#).ok(), Some(Step::AskedAge));
}
