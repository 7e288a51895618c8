//! Typed schema migrations: how a record of an older shape becomes the
//! current session type.
//!
//! `#[derive(Session)]` generates `Session::migrate` from
//! `#[session(version = N, migrate(from = Old, version = M), ...)]`; the
//! functions here are what that generated code calls.

use std::error::Error as StdError;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::codec::CodecError;

/// Why a conversion failed: shared, because [`MigrationError`] is `Clone`
/// like every error of the crate.
type ConvertError = Arc<dyn StdError + Send + Sync + 'static>;

/// Why a stored record of an older schema version did not become the
/// current session type, as `Session::migrate` reports it. The load turns
/// it into [`Error::Migration`](crate::Error::Migration), which names the
/// session, key and storage; the stored bytes are left in place.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The payload does not decode as the shape declared for its version.
    #[error(
        "the record does not decode as `{shape}` (the shape of version {version}) with the \
         {codec} codec: {source}"
    )]
    Decode {
        /// The version the record was read as.
        version: u32,
        /// The Rust type of that version's shape.
        shape: &'static str,
        /// The codec's name.
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },
    /// A `with = ...` conversion returned an error.
    #[error("converting `{from}` (version {version}) into `{into}` failed: {source}")]
    Convert {
        /// The version of the value that was being converted.
        version: u32,
        /// The type converted from.
        from: &'static str,
        /// The type converted into.
        into: &'static str,
        /// What the conversion returned.
        #[source]
        source: ConvertError,
    },
    /// The record's version is not one the type declares (it names none
    /// lower than its current one, or skips this one).
    #[error(
        "version {version} is not one `{type_name}` declares a shape for (declared: \
         {declared}); add `migrate(from = OldType, version = {version})` if this shape existed"
    )]
    UnknownVersion {
        /// The version the record carries.
        version: u32,
        /// The session type.
        type_name: &'static str,
        /// The versions the type knows, e.g. "1, 2, 3".
        declared: &'static str,
    },
}

/// What a `with = path::to::fn` conversion may return: the next shape
/// itself, or a `Result` whose error (any error type, or a `String`) becomes
/// [`MigrationError::Convert`].
#[diagnostic::on_unimplemented(
    message = "a `with` migration must return `{Next}` or `Result<{Next}, E>`, not `{Self}`",
    label = "returns `{Self}`",
    note = "the error type `E` must be an error (or a `String`): it is reported with the record's key"
)]
pub trait MigrationOutput<Next> {
    /// The next shape, or the conversion's error.
    fn into_next(self) -> Result<Next, ConvertError>;
}

impl<Next> MigrationOutput<Next> for Next {
    fn into_next(self) -> Result<Next, ConvertError> {
        Ok(self)
    }
}

impl<Next, E> MigrationOutput<Next> for Result<Next, E>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    fn into_next(self) -> Result<Next, ConvertError> {
        self.map_err(|error| ConvertError::from(error.into()))
    }
}

/// The conversion of a `migrate(from = Prev, ...)` without `with`: the next
/// shape must implement `From<Prev>`.
#[diagnostic::on_unimplemented(
    message = "no migration from `{Prev}` to `{Self}`",
    label = "`{Self}` does not implement `From<{Prev}>`",
    note = "implement `From<{Prev}> for {Self}`, or name a conversion in this `migrate(...)`: \
            `with = path::to::fn` taking `{Prev}` and returning `{Self}` or `Result<{Self}, E>`"
)]
pub trait MigrateFrom<Prev>: Sized {
    /// Converts the previous shape.
    fn migrate_from(prev: Prev) -> Self;
}

impl<Prev, Next: From<Prev>> MigrateFrom<Prev> for Next {
    fn migrate_from(prev: Prev) -> Self {
        Next::from(prev)
    }
}

/// Decodes `payload` as `Shape`, the shape of `version`, with codec `C`
/// (the session type's).
#[doc(hidden)]
pub fn decode_shape<C: Codec, Shape: DeserializeOwned>(
    version: u32,
    payload: &[u8],
) -> Result<Shape, MigrationError> {
    C::decode::<Shape>(payload).map_err(|source| MigrationError::Decode {
        version,
        shape: std::any::type_name::<Shape>(),
        codec: C::NAME,
        source,
    })
}

/// One step through `From` (a `migrate(...)` without `with`).
#[doc(hidden)]
pub fn step_from<Prev, Next: MigrateFrom<Prev>>(prev: Prev) -> Result<Next, MigrationError> {
    Ok(Next::migrate_from(prev))
}

/// One step through a `with = ...` function's output.
#[doc(hidden)]
pub fn step_with<Prev, Next>(
    version: u32,
    output: impl MigrationOutput<Next>,
) -> Result<Next, MigrationError> {
    output
        .into_next()
        .map_err(|source| MigrationError::Convert {
            version,
            from: std::any::type_name::<Prev>(),
            into: std::any::type_name::<Next>(),
            source,
        })
}

/// A version `S` declares no shape for.
#[doc(hidden)]
pub fn unknown_version<S: ?Sized>(version: u32, declared: &'static str) -> MigrationError {
    MigrationError::UnknownVersion {
        version,
        type_name: std::any::type_name::<S>(),
        declared,
    }
}
