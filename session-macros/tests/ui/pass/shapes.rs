//! Named, tuple and unit structs, field defaults written as ordinary Rust
//! expressions, and the three ways an enum gets its initial value.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tg_session::Session;

const START: i64 = 10;

#[derive(Session, Serialize, Deserialize)]
#[session(key = "named")]
struct Named {
    #[session(default = 1)]
    int: u32,
    #[session(default = -1)]
    negative: i32,
    #[session(default = START * 2)]
    constant: i64,
    #[session(default = vec![1, 2])]
    list: Vec<u8>,
    #[session(default = String::from("x"))]
    text: String,
    #[session(default = "y".to_owned())]
    method: String,
    #[session(default = Some(3))]
    some: Option<u8>,
    #[session(default = { let base = 20; base + 1 })]
    block: u32,
    #[session(default = [0u8; 4])]
    array: [u8; 4],
    #[session(default = (1, true))]
    tuple: (u8, bool),
    #[session(default = HashMap::<String, u8>::from([("a".to_owned(), 1)]))]
    turbofish: HashMap<String, u8>,
    #[session(default = if START > 5 { 'b' } else { 's' })]
    conditional: char,
    #[session(default = 1..=3)]
    range: std::ops::RangeInclusive<u8>,
    plain: Option<String>,
}

#[derive(Session, Serialize, Deserialize)]
#[session(key = "tuple")]
struct Tuple(
    #[session(default = 5)] u8,
    String,
    #[session(default = vec!['a'])] Vec<char>,
);

#[derive(Session, Serialize, Deserialize)]
#[session(key = "unit")]
struct Unit;

#[derive(Session, Serialize, Deserialize, PartialEq, Debug)]
#[session(key = "by_variant")]
enum ByVariant {
    Start,
    #[session(default)]
    AskName,
    Named {
        name: String,
    },
    Aged(u8),
}

fn ask_age() -> ByInitial {
    ByInitial::AskAge { attempts: 3 }
}

#[derive(Session, Serialize, Deserialize, PartialEq, Debug)]
#[session(key = "by_initial", initial = ask_age)]
enum ByInitial {
    Start,
    AskAge { attempts: u8 },
}

#[derive(Session, Serialize, Deserialize, Default, PartialEq, Debug)]
#[session(key = "by_default")]
enum ByDefault {
    Start,
    #[default]
    Idle,
}

fn main() {
    let named = Named::initial();
    assert_eq!(named.int, 1);
    assert_eq!(named.negative, -1);
    assert_eq!(named.constant, 20);
    assert_eq!(named.list, [1, 2]);
    assert_eq!(named.text, "x");
    assert_eq!(named.method, "y");
    assert_eq!(named.some, Some(3));
    assert_eq!(named.block, 21);
    assert_eq!(named.array, [0; 4]);
    assert_eq!(named.tuple, (1, true));
    assert_eq!(named.turbofish.get("a"), Some(&1));
    assert_eq!(named.conditional, 'b');
    assert_eq!(named.range, 1..=3);
    assert_eq!(named.plain, None);

    let Tuple(five, empty, chars) = Tuple::initial();
    assert_eq!((five, empty.as_str(), chars), (5, "", vec!['a']));
    let Unit = Unit::initial();

    assert_eq!(ByVariant::initial(), ByVariant::AskName);
    assert_eq!(ByInitial::initial(), ByInitial::AskAge { attempts: 3 });
    assert_eq!(ByDefault::initial(), ByDefault::Idle);
}
