//! Who may call what: a bearer token read from a file guards the endpoints that change the
//! cluster (every method but GET and HEAD), and optionally the read-only ones too. Without a
//! token the mutating endpoints are refused outright: nothing that can stop or reshape a
//! cluster is open to anyone who reaches the port.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

use super::http::{Method, Response};
use super::routes;

/// The shortest token accepted (bytes, after trimming the final newline).
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file cannot be read.
    #[error(
        "cannot read the API token {}: {source}; create it with e.g. `head -c 24 /dev/urandom \
         | base64 > {}`",
        .path.display(),
        .path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token is too short, or is not one visible-ASCII word.
    #[error(
        "the API token in {} must be at least {MIN_TOKEN_LEN} visible ASCII characters \
         without spaces",
        .path.display()
    )]
    Unusable {
        /// The file.
        path: PathBuf,
    },
}

/// The API's access rule.
#[derive(Clone, Default)]
pub struct ApiAuth {
    token: Option<Vec<u8>>,
    reads: bool,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("reads", &self.reads)
            .finish()
    }
}

impl ApiAuth {
    /// No token: read-only endpoints are open, mutating ones refused (403).
    pub fn read_only() -> Self {
        Self::default()
    }

    /// Mutating endpoints need `Authorization: Bearer <token>`; read-only ones too when
    /// `reads`.
    pub fn with_token(token: &str, reads: bool) -> Result<Self, AuthError> {
        Self::check(token.as_bytes(), Path::new("(given token)"))?;
        Ok(Self {
            token: Some(token.as_bytes().to_vec()),
            reads,
        })
    }

    /// The token in `path` (one line).
    pub fn from_file(path: &Path, reads: bool) -> Result<Self, AuthError> {
        let bytes = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let token = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let token = token.strip_suffix(b"\r").unwrap_or(token);
        Self::check(token, path)?;
        Ok(Self {
            token: Some(token.to_vec()),
            reads,
        })
    }

    fn check(token: &[u8], path: &Path) -> Result<(), AuthError> {
        if token.len() < MIN_TOKEN_LEN || !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::Unusable {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The refusal for a request with `method` and `bearer`, or `None` if it may proceed.
    pub fn refuse(&self, method: Method, bearer: Option<&str>) -> Option<Response> {
        let mutating = !matches!(method, Method::Get | Method::Head);
        if !mutating && !self.reads {
            return None;
        }
        let Some(token) = &self.token else {
            return Some(routes::error(
                403,
                "this endpoint changes the cluster and the API has no token: start the node \
                 with --api-token-file (or api_token_file in the inventory's [cluster])",
            ));
        };
        let ok = bearer.is_some_and(|b| bool::from(b.as_bytes().ct_eq(token)));
        if ok {
            return None;
        }
        let mut r = routes::error(
            401,
            if bearer.is_some() {
                "the bearer token is not this API's; send the one in the node's API token file"
            } else {
                "this endpoint needs `Authorization: Bearer <token>` with the node's API token"
            },
        );
        r.challenge = true;
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef-token";

    #[test]
    fn mutating_needs_the_token_reads_only_when_asked() {
        let a = ApiAuth::with_token(T, false).unwrap();
        assert!(a.refuse(Method::Get, None).is_none());
        assert!(a.refuse(Method::Head, None).is_none());
        let r = a.refuse(Method::Delete, None).unwrap();
        assert_eq!((r.status, r.challenge), (401, true));
        assert_eq!(
            a.refuse(Method::Post, Some("wrong-token-0000000"))
                .unwrap()
                .status,
            401
        );
        assert!(a.refuse(Method::Post, Some(T)).is_none());
        let strict = ApiAuth::with_token(T, true).unwrap();
        assert_eq!(strict.refuse(Method::Get, None).unwrap().status, 401);
        assert!(strict.refuse(Method::Get, Some(T)).is_none());
    }

    #[test]
    fn without_a_token_mutating_endpoints_are_closed() {
        let a = ApiAuth::read_only();
        assert!(a.refuse(Method::Get, None).is_none());
        let r = a.refuse(Method::Delete, Some(T)).unwrap();
        assert_eq!(r.status, 403);
        assert!(String::from_utf8_lossy(&r.body).contains("--api-token-file"));
    }

    #[test]
    fn token_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("ssi-api-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, format!("{T}\n")).unwrap();
        assert!(ApiAuth::from_file(&good, false).unwrap().has_token());
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        assert!(matches!(
            ApiAuth::from_file(&short, false),
            Err(AuthError::Unusable { .. })
        ));
        assert!(matches!(
            ApiAuth::from_file(&dir.join("missing"), false),
            Err(AuthError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
