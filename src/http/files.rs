//! The REST API's files (README "REST API"): a study's list, multipart upload, metadata, download,
//! delete.
//!
//! Transfers stream, a [`CHUNK`] at a time, so a transfer holds about one chunk of memory
//! whatever the file's size. An upload streams the multipart field `file` through SHA-256 into
//! the database chunk by chunk, never past `--max-upload` bytes: a declared `Content-Length`
//! over the limit is refused before any of the body is read, and a body that turns out longer is
//! refused as soon as it passes the limit (hyper then closes the connection rather than reading
//! the rest). A download reads one chunk per statement as its client takes them; a client that
//! takes none for `--transfer-stall-timeout` is cut off. At most `--max-transfers` uploads and
//! downloads run at once; one more is answered 503 `busy` with `Retry-After`.
//!
//! Files have no version: their ETag is the content's sha256, which is what `If-Match` on
//! DELETE compares.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartError;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::{watch, OwnedSemaphorePermit};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody, Result, ResultExt};
use super::extract::{etag, AppJson, AppPath, AppQuery, Checks, IfMatch, Items, Page};
use super::guard::Decision;
use super::serve::CloseConnection;
use super::AppState;
use crate::db::files::{self, File, NewFile};
use crate::db::studies;

pub const NAME_MAX: usize = 255;
/// Room for the multipart framing (boundaries, part headers) around a file of the largest
/// allowed size; the whole request body is capped at `max_upload` plus this.
pub const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// Bytes a transfer moves per database statement. With the multipart parser's and hyper's
/// buffers it bounds a transfer's memory (well under 1 MiB), so `--max-transfers` of them bound
/// all file traffic; a 25 MiB file costs 100 statements each way.
pub const CHUNK: usize = 256 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upload))
        .routes(routes!(read, delete))
        .routes(routes!(download))
}

/// `multipart/form-data` with the file in the field `file`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Upload {
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

fn no_study(id: i64) -> ApiError {
    ApiError::NotFound(format!("no study {id}"))
}

fn no_file(id: i64) -> ApiError {
    ApiError::NotFound(format!("no file {id}"))
}

fn too_large(max: u64) -> ApiError {
    ApiError::TooLarge(format!("the upload is larger than the limit of {max} bytes"))
}

fn multipart_error(e: MultipartError, max: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(max)
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// Characters that reorder or hide the text around them (Unicode bidi controls, line and paragraph
/// separators): `invoice\u{202E}fdp.exe` shows as `invoiceexe.pdf`.
fn is_deceptive(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{2028}' | '\u{2029}')
}

/// The last path component of the client's file name, without control or bidi characters.
fn clean_name(name: Option<&str>) -> String {
    let base = name.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base.chars().filter(|&c| !c.is_control() && !is_deceptive(c)).collect();
    if clean.trim().is_empty() {
        "file".to_owned()
    } else {
        clean
    }
}

/// `attachment; filename="…"` with an ASCII fallback, and the exact name as RFC 8187 `filename*`.
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

// GET /api/studies/{id}/files
/// A study's files (metadata) in id order, one keyset page at a time.
#[utoipa::path(get, path = "/api/studies/{id}/files", tag = "files", params(("id" = i64, Path), Page),
    responses(
        (status = 200, body = Items<File>),
        (status = 400, description = "Malformed id or query string", body = ErrorBody),
        (status = 404, description = "No such study", body = ErrorBody),
        (status = 422, description = "limit out of range", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    access: Decision,
    AppQuery(page): AppQuery<Page>,
) -> Result<AppJson<Items<File>>> {
    access.check(id)?;
    let mut checks = Checks::default();
    let limit = page.limit(&mut checks);
    checks.done()?;
    let pool = &state.feed.pool;
    if !studies::exists(pool, id).await? {
        return Err(no_study(id));
    }
    Ok(AppJson(Items {
        items: files::list(pool, id, page.after, limit).await?,
    }))
}

// POST /api/studies/{id}/files (multipart field `file`)
/// Upload a file to a study; answers its metadata.
#[utoipa::path(post, path = "/api/studies/{id}/files", tag = "files", params(("id" = i64, Path)),
    request_body(content = Upload, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = File, headers(("ETag" = String, description = "\"<sha256>\""))),
        (status = 400, description = "Malformed id, or not a multipart body", body = ErrorBody),
        (status = 404, description = "No such study", body = ErrorBody),
        (status = 413, description = "Larger than --max-upload", body = ErrorBody),
        (status = 422, description = "No `file` field, or a bad file name", body = ErrorBody),
        (status = 503, description = "Database unavailable, or `busy`: --max-transfers transfers are running (Retry-After)", body = ErrorBody),
    ))]
async fn upload(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    access: Decision,
    headers: HeaderMap,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Result<impl IntoResponse> {
    access.check(id)?;
    let max = state.max_upload;
    // Refuse a declared oversize body before reading any of it (and before `100 Continue`).
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max.saturating_add(MULTIPART_OVERHEAD)) {
        return Err(too_large(max));
    }
    let mut multipart = multipart.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let pool = &state.feed.pool;
    if !studies::exists(pool, id).await? {
        return Err(no_study(id));
    }
    // Held until the handler returns, or is dropped with it (client gone, --request-timeout).
    let _permit = transfer_permit(&state)?;

    let mut field = loop {
        match multipart.next_field().await.map_err(|e| multipart_error(e, max))? {
            Some(f) if f.name() == Some("file") => break f,
            Some(_) => continue, // other fields are skipped as they stream past
            None => {
                return Err(ApiError::invalid(
                    "file",
                    "is required: send the content as the multipart field `file`",
                ))
            }
        }
    };
    let name = clean_name(field.file_name());
    let content_type = field.content_type().unwrap_or("application/octet-stream").to_owned();
    Checks::default()
        .text("name", Some(&name), true, NAME_MAX)
        .check(
            "content_type",
            content_type.len() <= 255 && HeaderValue::from_str(&content_type).is_ok(),
            "must be a valid media type",
        )
        .done()?;

    if let Err(e) = files::sweep_staged(pool).await {
        tracing::warn!(error = %e, "dropping abandoned upload chunks failed");
    }
    let mut staged = Staged::new(pool.clone());
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut buf = Vec::with_capacity(CHUNK);
    while let Some(mut chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
        size += chunk.len() as u64;
        if size > max {
            return Err(too_large(max));
        }
        hasher.update(&chunk);
        while !chunk.is_empty() {
            let take = chunk.len().min(CHUNK - buf.len());
            buf.extend_from_slice(&chunk.split_to(take));
            if buf.len() == CHUNK {
                staged.push(&buf).await?;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        staged.push(&buf).await?;
    }
    drop(buf);
    let sha256 = hex::encode(hasher.finalize());

    let new = NewFile {
        study_id: id,
        name: &name,
        content_type: &content_type,
        sha256: &sha256,
        size_bytes: i64::try_from(size).map_err(anyhow::Error::from)?,
    };
    let mut tx = pool.begin().await?;
    let file = files::insert(&mut *tx, &new)
        .await
        .on_constraint("files_study_id_fkey", || no_study(id))?;
    if !files::join_chunks(&mut tx, file.id, staged.upload, staged.chunks).await? {
        return Err(anyhow::anyhow!("upload {}: staged chunks went missing", staged.upload).into());
    }
    tx.commit().await?;
    staged.joined = true;
    Ok((StatusCode::CREATED, etag(&file.sha256), AppJson(file)))
}

/// One of `--max-transfers`, or 503 `busy`.
fn transfer_permit(state: &AppState) -> Result<OwnedSemaphorePermit> {
    state.transfers.clone().try_acquire_owned().map_err(|_| {
        ApiError::Busy(
            "the server is running as many file transfers as --max-transfers allows; try again shortly".into(),
        )
    })
}

/// An upload's chunks staged so far. Dropped before they are joined into a file (an error, the
/// client gone, `--request-timeout`), it deletes them in the background.
struct Staged {
    pool: PgPool,
    upload: uuid::Uuid,
    chunks: i32,
    /// Whether a chunk may have reached the database (a statement was started).
    started: bool,
    joined: bool,
}

impl Staged {
    fn new(pool: PgPool) -> Staged {
        Staged {
            pool,
            upload: uuid::Uuid::new_v4(),
            chunks: 0,
            started: false,
            joined: false,
        }
    }

    async fn push(&mut self, data: &[u8]) -> Result<()> {
        self.started = true;
        files::stage_chunk(&self.pool, self.upload, self.chunks, data).await?;
        self.chunks += 1;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.joined || !self.started {
            return;
        }
        let (pool, upload) = (self.pool.clone(), self.upload);
        // Handlers run on the runtime, so there is one to spawn on; a miss is swept a day later.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = files::unstage(&pool, upload).await {
                    tracing::warn!(error = %e, %upload, "dropping a failed upload's chunks failed");
                }
            });
        }
    }
}

// GET /api/files/{id}
/// A file's metadata.
#[utoipa::path(get, path = "/api/files/{id}", tag = "files", params(("id" = i64, Path)),
    responses(
        (status = 200, body = File, headers(("ETag" = String, description = "\"<sha256>\""))),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn read(State(state): State<AppState>, AppPath(id): AppPath<i64>, access: Decision) -> Result<impl IntoResponse> {
    access.check(id)?;
    let file = files::get(&state.feed.pool, id).await?.ok_or_else(|| no_file(id))?;
    Ok((etag(&file.sha256), AppJson(file)))
}

// GET /api/files/{id}/content
/// The file's bytes, with its stored content type and its name as `Content-Disposition`.
#[utoipa::path(get, path = "/api/files/{id}/content", tag = "files", params(("id" = i64, Path)),
    responses(
        (status = 200, description = "The bytes, as the stored content type", content_type = "*/*", body = Vec<u8>,
            headers(("ETag" = String, description = "\"<sha256>\""), ("Content-Disposition" = String))),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "No such file, or no stored content", body = ErrorBody),
        (status = 503, description = "Database unavailable, or `busy`: --max-transfers transfers are running (Retry-After)", body = ErrorBody),
    ))]
async fn download(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    access: Decision,
    close: Option<Extension<CloseConnection>>,
) -> Result<Response> {
    access.check(id)?;
    let file = files::content(&state.feed.pool, id).await?.ok_or_else(|| no_file(id))?;
    let length = file
        .length
        .ok_or_else(|| ApiError::NotFound(format!("file {id} has no stored content")))?;
    let permit = transfer_permit(&state)?;
    let content_type =
        HeaderValue::from_str(&file.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_LENGTH, HeaderValue::from(length)),
        (
            header::CONTENT_DISPOSITION,
            // Cleaned again: an outside writer may have stored any name.
            HeaderValue::from_str(&content_disposition(&clean_name(Some(&file.name)))).map_err(anyhow::Error::from)?,
        ),
        (
            header::ETAG,
            HeaderValue::from_str(&format!("\"{}\"", file.sha256)).map_err(anyhow::Error::from)?,
        ),
        // Uploaded HTML must not run as the admin page's origin.
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ];
    let body = Body::from_stream(content_stream(
        state.feed.pool.clone(),
        id,
        length,
        permit,
        state.transfer_stall_timeout,
        close.map(|Extension(c)| c),
    ));
    Ok((headers, body).into_response())
}

/// Why a download ended early; hyper then closes the connection (the body is shorter than its
/// `Content-Length`), so the client cannot mistake it for the whole file.
#[derive(Debug, thiserror::Error)]
enum DownloadError {
    #[error("the file was deleted or changed during its download")]
    Gone,
    #[error("the client took no data for {0:?}")]
    Stalled(Duration),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// File `id`'s `length` bytes, a [`CHUNK`] per statement, read as the client takes them.
///
/// Hyper asks for the next chunk once the last one is in its write buffer, so the time between
/// two asks is how long the client took to read one chunk. A watchdog task closes the connection
/// (`close`) when that passes `stall`: the body cannot, as hyper stops polling it while the
/// client does not read. The transfer's `permit` goes with the body, whichever way it ends.
fn content_stream(
    pool: PgPool,
    id: i64,
    length: i64,
    permit: OwnedSemaphorePermit,
    stall: Duration,
    close: Option<CloseConnection>,
) -> impl futures::Stream<Item = std::result::Result<Bytes, DownloadError>> {
    // `asked_tx` is the body's; the watchdog ends when it is dropped with the body.
    let (asked_tx, mut asked_rx) = watch::channel(());
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn({
        let stalled = stalled.clone();
        async move {
            loop {
                match tokio::time::timeout(stall, asked_rx.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        stalled.store(true, std::sync::atomic::Ordering::Relaxed);
                        if let Some(CloseConnection(close)) = &close {
                            tracing::debug!(file = id, "a download's client stopped reading; closing");
                            close.cancel();
                        }
                        return;
                    }
                }
            }
        }
    });
    let state = (pool, 0i64, permit, asked_tx);
    futures::stream::try_unfold(state, move |(pool, offset, permit, asked_tx)| {
        let stalled = stalled.clone();
        async move {
            if stalled.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(DownloadError::Stalled(stall));
            }
            if offset >= length {
                return Ok(None);
            }
            asked_tx.send_replace(());
            let len = (length - offset).min(CHUNK as i64);
            // Both under a bytea's 1 GiB.
            let (from, len) = (offset as i32, len as i32);
            let data = files::content_slice(&pool, id, from, len)
                .await?
                .ok_or(DownloadError::Gone)?;
            if data.is_empty() {
                return Err(DownloadError::Gone);
            }
            let next = offset + data.len() as i64;
            Ok(Some((Bytes::from(data), (pool, next, permit, asked_tx))))
        }
    })
}

// DELETE /api/files/{id}, honouring If-Match (the ETag is the sha256)
/// Delete a file and its bytes.
#[utoipa::path(delete, path = "/api/files/{id}", tag = "files",
    params(("id" = i64, Path), ("If-Match" = Option<String>, Header, description = "The ETag last read: \"<sha256>\"")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id or If-Match", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 412, description = "If-Match does not match the file's sha256", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn delete(State(state): State<AppState>, AppPath(id): AppPath<i64>, if_match: IfMatch) -> Result<StatusCode> {
    let pool = &state.feed.pool;
    match files::delete(pool, id, if_match.tags()).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => match files::get(pool, id).await? {
            Some(f) => Err(ApiError::PreconditionFailed {
                current: format!("\"{}\"", f.sha256),
            }),
            None => Err(no_file(id)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_lose_their_directories_and_control_characters() {
        assert_eq!(clean_name(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_name(Some(r"C:\Users\ana\report.pdf")), "report.pdf");
        assert_eq!(clean_name(Some("a\nb.txt")), "ab.txt");
        assert_eq!(clean_name(None), "file");
    }

    #[test]
    fn content_disposition_keeps_the_exact_name_and_an_ascii_fallback() {
        assert_eq!(
            content_disposition("a b.txt"),
            "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"
        );
        assert_eq!(
            content_disposition("é\".txt"),
            "attachment; filename=\"__.txt\"; filename*=UTF-8''%C3%A9%22.txt"
        );
    }
}
