//! PLACEHOLDER until the `values` branch lands.
use crate::feed::views::value::ColType;

#[derive(Debug)]
pub enum LiteralError {
    Bad { index: usize, message: String },
    Db(sqlx::Error),
}

pub async fn read(db: &sqlx::PgPool, items: &[(ColType, &str)]) -> Result<Vec<String>, LiteralError> {
    let mut out = Vec::new();
    for (index, (ty, text)) in items.iter().enumerate() {
        let sql = format!(
            "select to_jsonb(($1::text)::{})::text from (select set_config('timezone', 'UTC', true)) x",
            ty.sql()
        );
        let mut tx = db.begin().await.map_err(LiteralError::Db)?;
        match sqlx::query_scalar::<_, String>(&sql)
            .bind(text)
            .fetch_one(&mut *tx)
            .await
        {
            Ok(j) => out.push(j),
            Err(sqlx::Error::Database(d)) if d.code().is_some_and(|c| c.starts_with("22")) => {
                return Err(LiteralError::Bad {
                    index,
                    message: d.message().to_owned(),
                })
            }
            Err(e) => return Err(LiteralError::Db(e)),
        }
    }
    Ok(out)
}
