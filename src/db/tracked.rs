//! The tables in the feed (`pgfeed.tracked`): which topics exist and how to snapshot them.

use sqlx::PgExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Tracked {
    /// The table topic: `studies`, or `schema.table` outside `public`.
    pub topic: String,
    /// The table as a quoted, qualified SQL name, ready for `format!` into a query.
    pub relation: String,
    /// Primary key columns, quoted.
    pub pk: Vec<String>,
    /// Their types, for casting a row topic's key.
    pub pk_types: Vec<String>,
}

impl Tracked {
    /// Whether `key` could name a row of this table (a non-integer can never match an integer key).
    pub fn key_is_plausible(&self, key: &str) -> bool {
        match self.pk_types.as_slice() {
            [t] if matches!(t.as_str(), "bigint" | "integer" | "smallint") => key.parse::<i64>().is_ok(),
            [_] => true,
            many => key.split(',').count() == many.len(),
        }
    }
}

pub async fn load(db: impl PgExecutor<'_>) -> Result<Vec<Tracked>, sqlx::Error> {
    sqlx::query_as::<_, Tracked>(
        r#"select t.topic,
                  t.relid::text as relation,
                  array_agg(quote_ident(a.attname) order by k.ord) as pk,
                  array_agg(format_type(a.atttypid, a.atttypmod) order by k.ord) as pk_types
           from pgfeed.tracked t
           cross join lateral unnest(t.pk) with ordinality as k(col, ord)
           join pg_attribute a on a.attrelid = t.relid and a.attname = k.col
           group by t.topic, t.relid"#,
    )
    .fetch_all(db)
    .await
}
