//! Entries appended from outside sluice's own producers: HTTP ingest's writes (see
//! `src/host/admin/ingest.rs`), one script call per request.

use super::{Conn, StoreError, scripts};

/// How appending a request's entries went wrong.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The key holds another type (its name): nothing was written.
    #[error("the key holds a {0}, not a stream")]
    NotAStream(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Append `entries` (each its name/value pairs, at least one) to `stream`, all in one script
/// call: every entry or, when the key is not a stream, none. Returns their ids, in order.
pub async fn append(
    conn: &mut Conn,
    stream: &str,
    entries: &[Vec<(String, String)>],
) -> Result<Vec<String>, AppendError> {
    let mut call = scripts::INGEST.key(stream);
    for fields in entries {
        call.arg(fields.len());
        for (name, value) in fields {
            call.arg(name).arg(value);
        }
    }
    match call.invoke_async(conn).await {
        Ok(ids) => Ok(ids),
        Err(e) if e.code() == Some("SLUICE_BADTARGET") => Err(AppendError::NotAStream(
            e.detail().unwrap_or("other type").to_string(),
        )),
        Err(e) => Err(AppendError::Store(e.into())),
    }
}
