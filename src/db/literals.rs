//! Filter literals read by PostgreSQL itself: a view's `eq.1.50` or `gte.2026-01-01 10:00+02`
//! means what PostgreSQL's input function for the column's type makes of it (every spelling it
//! accepts, its rounding, its errors), and comes back as `to_jsonb` renders that value, the form
//! `views::value::Val::from_json` reads in rows.

use sqlx::PgPool;

use crate::feed::views::value::ColType;

#[derive(Debug, thiserror::Error)]
pub enum LiteralError {
    /// PostgreSQL would not read `items[index]` as its type; `message` is its own words.
    #[error("literal {index}: {message}")]
    Bad { index: usize, message: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Reads filter literals as PostgreSQL reads them: each `(ty, text)` cast from text to its type
/// and rendered back with `to_jsonb` under TimeZone UTC (one statement, in a transaction that sets
/// the zone: four round trips, once per subscribe). The error names the index of the first literal PostgreSQL would not read as its type, with its
/// message (e.g. invalid input syntax for type bigint: "x"). Other database errors pass through.
pub async fn read(db: &PgPool, items: &[(ColType, &str)]) -> Result<Vec<String>, LiteralError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let batch_error = match render(db, items).await {
        Ok(json) => return Ok(json),
        Err(e) if data_exception(&e).is_some() => e,
        Err(e) => return Err(e.into()),
    };
    // Which one failed: PostgreSQL's error does not say, so try each alone (only on this path,
    // a client's mistake, so the common case stays one statement).
    for (index, item) in items.iter().enumerate() {
        if let Err(e) = render(db, std::slice::from_ref(item)).await {
            return Err(match data_exception(&e) {
                Some(message) => LiteralError::Bad { index, message },
                None => e.into(),
            });
        }
    }
    Err(batch_error.into())
}

async fn render(db: &PgPool, items: &[(ColType, &str)]) -> Result<Vec<String>, sqlx::Error> {
    // An array constructor, not `jsonb_build_array`: functions take at most 100 arguments, and an
    // `in.(…)` list may be longer.
    let casts: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, (ty, _))| format!("to_jsonb((${}::text)::{})::text", i + 1, ty.sql()))
        .collect();
    let sql = format!("select array[{}]::text[]", casts.join(", "));
    let mut query = sqlx::query_scalar::<_, Vec<String>>(&sql).persistent(false);
    for (_, text) in items {
        query = query.bind(*text);
    }
    // A timestamptz literal without an offset is read in the session's zone, and rendered in it:
    // UTC, as the capture trigger renders rows.
    let mut tx = db.begin().await?;
    sqlx::query("set local timezone = 'UTC'").execute(&mut *tx).await?;
    let json = query.fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(json)
}

/// The message of a data exception (SQLSTATE class 22: bad syntax, out of range, bad encoding…),
/// which is what a literal of the wrong form raises.
fn data_exception(e: &sqlx::Error) -> Option<String> {
    let db = e.as_database_error()?;
    db.code()
        .filter(|code| code.starts_with("22"))
        .map(|_| db.message().to_owned())
}
