//! What build this is: the crate version and the commit it was built from (control/build.rs).

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the build comes from (`unknown` outside a git checkout; `-dirty` with
/// uncommitted changes).
pub const COMMIT: &str = env!("SSI_DP_COMMIT");

/// `VERSION (commit COMMIT)`, for `--version`.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SSI_DP_COMMIT"),
    ")"
);
