//! The generated code compiles without a warning where the user has shadowed
//! prelude names, uses raw identifiers and a renamed crate, and names the
//! accessor in camelCase.
#![deny(warnings)]

extern crate tg_session as renamed;

mod user {
    use renamed::{Error, Session, Sessions};
    use serde::{Deserialize, Serialize};

    #[allow(dead_code)]
    struct Result;
    #[allow(dead_code)]
    struct Option;
    #[allow(dead_code)]
    struct Some;
    #[allow(dead_code)]
    struct None;
    #[allow(dead_code)]
    struct Ok;
    #[allow(dead_code)]
    struct Err;
    #[allow(dead_code)]
    struct Default;
    #[allow(dead_code)]
    struct Box;
    #[allow(dead_code)]
    struct String;
    #[allow(dead_code)]
    struct Vec;
    #[allow(dead_code)]
    trait Send {}
    #[allow(dead_code)]
    trait Sync {}
    #[allow(dead_code)]
    trait Sized {}
    #[allow(dead_code)]
    trait Future {}
    #[allow(dead_code)]
    mod core {}
    #[allow(dead_code)]
    mod tg_session {}

    #[derive(Session, Serialize, Deserialize)]
    #[session(crate = "renamed", key = "sessionKey", ttl = "1h")]
    pub struct Hygiene {
        #[session(default = ::std::string::String::from("kind"))]
        pub r#type: ::std::string::String,
        #[session(default = 2)]
        pub r#match: u8,
        pub r#ref: ::std::vec::Vec<u8>,
    }

    #[derive(Session, Serialize, Deserialize)]
    #[session(crate = "renamed", key = "lazyKey", lazy)]
    pub enum Step {
        #[session(default)]
        r#Start,
        Ask(u8),
    }

    #[derive(Deserialize)]
    pub struct OldV1 {
        pub r#ref: u8,
    }

    #[derive(Deserialize)]
    pub struct OldV2 {
        pub r#ref: u16,
    }

    impl ::core::convert::From<OldV1> for OldV2 {
        fn from(old: OldV1) -> Self {
            OldV2 {
                r#ref: u16::from(old.r#ref),
            }
        }
    }

    fn from_v2(old: OldV2) -> ::core::result::Result<Versioned, ::std::num::TryFromIntError> {
        ::core::result::Result::Ok(Versioned {
            r#ref: u8::try_from(old.r#ref)?,
        })
    }

    /// Migrations under the same shadowed names.
    #[derive(Session, Serialize, Deserialize)]
    #[session(
        crate = "renamed",
        key = "versioned",
        lazy,
        version = 3,
        migrate(from = OldV1, version = 1),
        migrate(from = OldV2, version = 2, with = from_v2)
    )]
    pub struct Versioned {
        pub r#ref: u8,
    }

    /// Derived on a private type whose accessor is never called: still no
    /// unused-code warning.
    #[derive(Session, Serialize, Deserialize)]
    #[session(crate = "renamed", key = "unused")]
    struct Unused(#[session(default = 1)] u8);

    pub async fn handler(ctx: &Sessions) -> ::core::result::Result<u8, Error> {
        let mut session = ctx.sessionKey()?;
        session.r#match += 1;
        let step = ctx.lazyKey().await?;
        ::core::result::Result::Ok(session.r#match + u8::from(matches!(*step, Step::r#Start)))
    }

    pub fn check() {
        let initial = Hygiene::initial();
        assert_eq!(initial.r#type, "kind");
        assert_eq!(initial.r#match, 2);
        assert!(initial.r#ref.is_empty());
        assert_eq!(Hygiene::NAME, "sessionKey");
        assert_eq!(Step::NAME, "lazyKey");
        assert!(matches!(Step::initial(), Step::r#Start));
        assert_eq!(Versioned::SCHEMA_VERSION, ::core::option::Option::Some(3));
        let migrated = Versioned::migrate(::core::option::Option::None, br#"{"ref":4}"#);
        assert!(matches!(migrated, ::core::result::Result::Ok(Versioned { r#ref: 4 })));
    }
}

use user::HygieneSessionExt as _;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    user::check();
    let manager = renamed::SessionManager::builder()
        .register::<user::Hygiene>()
        .register::<user::Step>()
        .build()
        .unwrap();
    let ctx = manager.begin(renamed::UpdateIds::new().user(7)).await;
    assert_eq!(user::handler(&ctx).await.unwrap(), 4);
    assert_eq!(ctx.sessionKey().unwrap().r#match, 3);
    ctx.commit(renamed::HandlerOutcome::Succeeded)
        .await
        .unwrap();
}
